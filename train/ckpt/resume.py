"""Validated resume and warm start, both through `restore.restore_verified`.

The metadata's model config and tokenizer, and orbax's stored array signature (paths, shapes,
dtypes; no array data read), are compared with the configured model's abstract state by
`gates.arch_match` before a single array is restored. Restores target the current mesh's
shardings, so a checkpoint saved on one topology loads on another. After the restore, the
functional fingerprint (train/ckpt/fingerprint.py) is recomputed under the metadata's model and
must match: the non-shape fields (rope_theta, norm_eps, compute dtype, head split) and the
embedded tokenizer are proven too. A warm start (`--init`) is loaded and verified before the run
writes anything: `init_params` then, once the run's tokenizer is known, `warm_state`.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import optax
from absl import logging

from core.checks import first_line
from core.errors import CheckpointError
from gates import arch_match
from train.ckpt import metadata
from train.ckpt.checkpointer import Checkpointer
from train.ckpt.restore import restore_verified
from train.ckpt.stepspec import checkpoint_dir, split_path_step
from train.state.setup import TrainSetup
from train.state.step import TrainState


def restore_or_init(setup: TrainSetup, checkpointer: Checkpointer, data_iter: Any,
                    tokenizer: dict | None) -> tuple[TrainState, metadata.Metadata | None]:
  """Resume from the newest intact checkpoint (validated, strict) or start fresh.

  A damaged step (unreadable metadata or array metadata, a truncated or missing array file)
  is reported and skipped for the next newest; if every step is damaged the run stops
  rather than training from scratch over them. An architecture mismatch is never "damage".
  """
  steps = sorted(checkpointer.steps(), reverse=True)
  if not steps:
    return setup.fresh_state(), None
  damaged: dict[int, str] = {}
  for step in steps:
    try:
      got = restore_verified(
          checkpointer, step, source=f"checkpoint {checkpointer.directory}/{step}", setup=setup,
          expected_tokenizer=tokenizer,
          restore=lambda c, s, st: _restore(st, c, s, data_iter))
      state, meta = got.items["state"], got.meta
    except (arch_match.ArchitectureMismatchError, arch_match.MissingMetadataError):
      raise
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("checkpoint %s/%d is damaged, skipped: %s", checkpointer.directory,
                      step, first_line(e))
      damaged[step] = first_line(e)
      continue
    if damaged and jax.process_index() == 0:
      checkpointer.set_aside(sorted(damaged))
    return setup.to_train(state), meta
  raise CheckpointError(
      f"no usable checkpoint in {checkpointer.directory} ("
      + "; ".join(f"step {s}: {why}" for s, why in damaged.items())
      + "); refusing to train from scratch over them: move the directory aside to start "
      "afresh, or fix it")


def restore_step(setup: TrainSetup, checkpointer: Checkpointer, step: int, data_iter: Any,
                 tokenizer: dict | None) -> TrainState:
  """One checkpoint step's state in the training layout, validated like a resume (the data
  iterator set to its position): what a rollback restores (train/run/recovery.py)."""
  got = restore_verified(checkpointer, step, source=f"checkpoint {checkpointer.directory}/{step}",
                         setup=setup, expected_tokenizer=tokenizer,
                         restore=lambda c, s, st: _restore(st, c, s, data_iter))
  return setup.to_train(got.items["state"])


def _restore(setup: TrainSetup, checkpointer: Checkpointer, step: int, data_iter: Any
             ) -> dict[str, Any]:
  """The state's arrays and the data position -> {params, state}."""
  params_t, opt_t = setup.targets()
  same_topology = data_iter is not None and os.path.exists(os.path.join(
      checkpointer.directory, str(step), "data",
      f"process_{jax.process_index()}-of-{jax.process_count()}.json"))
  try:
    got = checkpointer.restore(step, params_target=params_t, opt_target=opt_t,
                               data_iter=data_iter if same_topology else None)
  except ValueError as e:
    raise CheckpointError(
        f"its arrays could not be restored ({first_line(e)}); if only the optimizer "
        f"settings changed, restore them, or warm start the parameters with --init") from None
  if data_iter is not None and not same_topology:
    # Saved by another process count: batch i is a pure function of (seed, i) and each
    # step consumes one batch, so the position is the step; this process's rows follow.
    logging.warning("checkpoint %s/%d was saved by another process count; data position "
                    "derived from the step", checkpointer.directory, step)
    data_state = data_iter.get_state()
    data_state["next_index"] = step
    data_iter.set_state(data_state)
  state = TrainState(jax.device_put(jax.numpy.asarray(step, jax.numpy.int32),
                                    setup.shardings.step), got["params"], got["opt_state"])
  return {"params": state.params, "state": state}


def has_steps(directory: str) -> bool:
  """Whether a checkpoints dir holds a committed step (what a run would resume); file names
  only, no orbax manager (which would start the JAX backend)."""
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def open_init(spec: str) -> tuple[Checkpointer, int]:
  """`--init=PATH[:STEP]` -> (read-only checkpointer, resolved step); refuses before any write
  when the path or step does not exist."""
  path, step = split_path_step(spec)
  ckpt = Checkpointer(checkpoint_dir(path), read_only=True)
  try:
    return ckpt, ckpt.resolve(step)
  except Exception:
    ckpt.close()
    raise


def init_params(setup: TrainSetup, spec: str) -> tuple[Any, metadata.Metadata]:
  """`--init=PATH[:STEP]`'s parameters, validated (config, signature, embedded tokenizer),
  restored onto the setup's mesh and fingerprint-verified; -> (params, metadata). Runs before
  the run's tokenizer is known (nothing is prepared yet): `warm_state` checks it."""
  ckpt, resolved = open_init(spec)
  try:
    got = restore_verified(ckpt, resolved, setup=setup,
                           source=f"--init={spec}: checkpoint {ckpt.directory}/{resolved}",
                           restore=lambda c, s, st: _init_arrays(c, s, st, spec))
  finally:
    ckpt.close()
  return got.items["params"], got.meta


def _init_arrays(ckpt: Checkpointer, step: int, setup: TrainSetup, spec: str) -> dict[str, Any]:
  try:
    return ckpt.restore(step, params_target=setup.targets()[0])
  except CheckpointError as e:
    raise CheckpointError(f"--init={spec}: {e}; pick another step") from None
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"--init={spec}: checkpoint step {step} is damaged "
                          f"({first_line(e)}); pick another step") from None


def warm_state(setup: TrainSetup, warm: tuple[Any, metadata.Metadata], spec: str,
               tokenizer: dict | None, tx: optax.GradientTransformation) -> TrainState:
  """The warm-started state: `init_params`' parameters (stored layout), once the checkpoint's
  tokenizer is proven to be the run's, with a fresh optimizer and schedule (step 0)."""
  params, meta = warm
  diffs = arch_match.tokenizer_differences(tokenizer, meta.tokenizer)
  if diffs:
    raise arch_match.ArchitectureMismatchError(f"--init={spec}", diffs)
  params = setup.to_train(params)
  opt_state = jax.jit(tx.init, out_shardings=setup.shardings.opt_state)(params)
  step0 = jax.device_put(jax.numpy.zeros((), jax.numpy.int32), setup.shardings.step)
  return TrainState(step0, params, opt_state)
