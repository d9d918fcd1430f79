"""Training state on a mesh, and validated resume: every restore proves the architecture first.

The metadata's model config and tokenizer, and orbax's stored array signature (paths, shapes,
dtypes; no array data read), are compared with the configured model's abstract state by
`gates.arch_match` before a single array is restored. Restores target the current mesh's
shardings, so a checkpoint saved on one topology loads on another.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import optax
from absl import logging
from flax import nnx

from gates import arch_match
from models.config import HF_IDENTITY, ModelConfig
from models.params import abstract_model, param_shapes
from train import sharding, step as step_lib
from train.checkpoint import Checkpointer, CheckpointError


def architecture(family: str) -> dict[str, str]:
  """The checkpoint metadata's `architecture` identity of a model family (ModelConfig.family):
  which Hugging Face class and model_type its tensors are laid out as."""
  hf_class, model_type = HF_IDENTITY[family]
  return {"family": family, "hf_class": hf_class, "model_type": model_type}


# The Llama identity (ModelConfig's default family); a run's metadata should use
# architecture(model_cfg.family).
ARCHITECTURE = architecture("llama")


def _sds(x: Any, s: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)


@dataclasses.dataclass
class TrainSetup:
  """The configured model's static graph, abstract state and shardings on a mesh."""

  model_cfg: ModelConfig
  graphdef: nnx.GraphDef
  init: Any
  abstract: step_lib.TrainState
  shardings: step_lib.TrainState
  mesh: jax.sharding.Mesh

  @classmethod
  def build(cls, model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int,
            mesh: jax.sharding.Mesh) -> "TrainSetup":
    graphdef, init = step_lib.init_fn(model_cfg, tx, seed)
    abstract = jax.eval_shape(init)
    specs = sharding.param_specs(abstract_model(model_cfg), mesh)
    shardings = sharding.state_shardings(abstract, specs, tx, mesh)
    return cls(model_cfg, graphdef, init, abstract, shardings, mesh)

  def jit_step(self, train_step: Any) -> Any:
    """jit a pure step with the state's shardings on BOTH sides: left to XLA, outputs such as
    norm scales came back split over fsdp and the second call was refused."""
    batch = sharding.batch_sharding(self.mesh)
    return jax.jit(train_step, in_shardings=(self.shardings, batch),
                   out_shardings=(self.shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0)

  def expected_signature(self) -> dict[str, tuple[tuple[int, ...], str]]:
    return param_shapes(abstract_model(self.model_cfg))

  def targets(self) -> tuple[Any, Any]:
    """Abstract restore targets carrying the current mesh's shardings."""
    params = jax.tree.map(_sds, self.abstract.params, self.shardings.params)
    opt = jax.tree.map(_sds, self.abstract.opt_state, self.shardings.opt_state)
    return params, opt

  def fresh_state(self) -> step_lib.TrainState:
    """Initialize directly sharded: each device materializes only its shards."""
    return jax.jit(self.init, out_shardings=self.shardings)()

  def validate(self, checkpointer: Checkpointer, step: int,
               tokenizer: dict | None) -> dict[str, Any]:
    """Raise before any array is read unless metadata and tensors match; return the metadata."""
    meta = checkpointer.read_meta(step)
    source = f"checkpoint {checkpointer.directory}/{step}"
    if not meta or "model" not in meta:
      raise arch_match.MissingMetadataError(f"{checkpointer.directory}/{step}")
    arch_match.check(source, expected_config=self.model_cfg.to_dict(),
                     expected_signature=self.expected_signature(),
                     found_signature=checkpointer.array_signature(step), meta=meta,
                     expected_tokenizer=tokenizer)
    return meta

  def restore_or_init(self, checkpointer: Checkpointer, data_iter: Any,
                      tokenizer: dict | None) -> tuple[step_lib.TrainState, dict | None]:
    """Resume from the newest intact checkpoint (validated, strict) or start fresh.

    A damaged step (unreadable metadata or array metadata, a truncated or missing array file)
    is reported and skipped for the next newest; if every step is damaged the run stops
    rather than training from scratch over them. An architecture mismatch is never "damage".
    """
    steps = sorted(checkpointer.steps(), reverse=True)
    if not steps:
      return self.fresh_state(), None
    damaged = []
    for step in steps:
      try:
        meta = self.validate(checkpointer, step, tokenizer)
        state = self._restore(checkpointer, step, data_iter)
      except (arch_match.ArchitectureMismatchError, arch_match.MissingMetadataError):
        raise
      except Exception as e:  # pylint: disable=broad-except
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        logging.warning("checkpoint %s/%d is damaged, skipped: %s", checkpointer.directory,
                        step, reason)
        damaged.append(f"step {step}: {reason}")
        continue
      if damaged and jax.process_index() == 0:
        checkpointer.set_aside([int(d.split(":")[0].split()[1]) for d in damaged])
      return state, meta
    raise CheckpointError(
        f"no usable checkpoint in {checkpointer.directory} ({'; '.join(damaged)}); refusing to "
        f"train from scratch over them: move the directory aside to start afresh, or fix it")

  def _restore(self, checkpointer: Checkpointer, step: int, data_iter: Any
               ) -> step_lib.TrainState:
    params_t, opt_t = self.targets()
    same_topology = data_iter is not None and os.path.exists(os.path.join(
        checkpointer.directory, str(step), "data",
        f"process_{jax.process_index()}-of-{jax.process_count()}.json"))
    try:
      got = checkpointer.restore(step, params_target=params_t, opt_target=opt_t,
                                 data_iter=data_iter if same_topology else None)
    except ValueError as e:
      raise CheckpointError(
          f"its arrays could not be restored ({str(e).splitlines()[0]}); if only the optimizer "
          f"settings changed, restore them, or warm start the parameters with --init") from None
    if data_iter is not None and not same_topology:
      # Saved by another process count: batch i is a pure function of (seed, i) and each
      # step consumes one batch, so the position is the step; this process's rows follow.
      logging.warning("checkpoint %s/%d was saved by another process count; data position "
                      "derived from the step", checkpointer.directory, step)
      data_state = data_iter.get_state()
      data_state["next_index"] = step
      data_iter.set_state(data_state)
    return step_lib.TrainState(
        jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), self.shardings.step),
        got["params"], got["opt_state"])

  def init_from(self, spec: str, tokenizer: dict | None, tx: optax.GradientTransformation
                ) -> tuple[step_lib.TrainState, dict[str, Any]]:
    """Warm start from `PATH[:STEP]`: validated parameters only; fresh optimizer and schedule."""
    from train.restore import checkpoint_dir  # Local: restore.py imports this module.
    path, step = split_init_spec(spec)
    ckpt = Checkpointer(checkpoint_dir(path), read_only=True)
    try:
      resolved = ckpt.resolve(step)
      meta = self.validate(ckpt, resolved, tokenizer)
      try:
        params = ckpt.restore(resolved, params_target=self.targets()[0])["params"]
      except Exception as e:  # pylint: disable=broad-except
        raise CheckpointError(f"--init={spec}: checkpoint step {resolved} is damaged "
                              f"({str(e).splitlines()[0]}); pick another step") from None
    finally:
      ckpt.close()
    opt_state = jax.jit(tx.init, out_shardings=self.shardings.opt_state)(params)
    step0 = jax.device_put(jax.numpy.zeros((), jax.numpy.int32), self.shardings.step)
    return step_lib.TrainState(step0, params, opt_state), meta


def split_init_spec(spec: str) -> tuple[str, str]:
  """'PATH[:STEP]' -> (PATH, STEP), STEP = latest|best|N, default latest."""
  head, sep, tail = spec.rpartition(":")
  if sep and head and (tail.isdigit() or tail in ("latest", "best")):
    return head, tail
  return spec, "latest"
