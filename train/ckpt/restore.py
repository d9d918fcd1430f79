"""The one verified restore, and the programmatic restore for evaluation built on it.

`restore_verified` is what every load path runs (resume, `--init`, `load_for_eval` and so
pregate-eval, pregate-sample, export and a distillation teacher): read the metadata record, prove
the stored tensors match the model it describes (and the configured one and the run's tokenizer,
when given) before any array is read, prove the embedded tokenizer is the one its data record
names, restore onto the current devices whatever topology saved them, then recompute the
functional fingerprint and the tokenizer probe under the metadata's model. Metadata that is
wrong in a field no shape shows (rope_theta, norm_eps, compute dtype, head split), or a
replaced tokenizer, is refused, not loaded as another model.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import optax
from flax import nnx

from core.errors import ConfigError
from gates import arch_match
from models.config import ModelConfig
from models.transformer import Transformer
from train.ckpt import fingerprint, metadata
from train.ckpt.checkpointer import Checkpointer
from train.ckpt.stepspec import checkpoint_dir
from train.data.tokenizer import Tokenizer, tokenizer_from_json
from train.state import sharding
from train.state.setup import TrainSetup


class Verified(NamedTuple):
  setup: TrainSetup
  meta: metadata.Metadata
  tokenizer: Tokenizer | None  # the embedded one (None: the checkpoint embeds none)
  items: dict[str, Any]  # what `restore` returned: params, and opt_state / data when asked
  fingerprint_difference: float | None  # None: no fingerprint recorded (warned)


class Restored(NamedTuple):
  model: Transformer
  meta: metadata.Metadata
  tokenizer: Tokenizer
  step: int


def default_mesh() -> jax.sharding.Mesh:
  """All local devices on the data axis: parameters replicated, batches split."""
  return sharding.make_mesh((jax.local_device_count(), 1, 1), jax.local_devices())


def _params_only(ckpt: Checkpointer, step: int, setup: TrainSetup) -> dict[str, Any]:
  return ckpt.restore(step, params_target=setup.targets()[0])


def restore_verified(ckpt: Checkpointer, step: int, *, source: str,
                     setup: TrainSetup | None = None, mesh: jax.sharding.Mesh | None = None,
                     expected: ModelConfig | None = None,
                     expected_tokenizer: dict[str, Any] | None = None,
                     need_tokenizer: bool = False,
                     restore: Callable[[Checkpointer, int, TrainSetup], dict[str, Any]]
                     = _params_only) -> Verified:
  """Validate, read, fingerprint: the one restore every load path runs.

  `setup` None: the model the metadata describes, built on `mesh` (evaluation); else the
  configured one, whose config and signature the checkpoint must match. `expected`: a model
  config the metadata must equal; `expected_tokenizer`: the run's tokenizer JSON;
  `need_tokenizer`: no embedded tokenizer is a DataError (evaluation needs one). `restore`
  reads the arrays (default: the parameters). Raises MissingMetadataError,
  ArchitectureMismatchError (FingerprintMismatchError, TokenizerMismatchError when only
  behaviour shows it), CheckpointError (damaged arrays), DataError (unusable tokenizer).
  """
  meta = metadata.require(ckpt.read_meta(step), f"{ckpt.directory}/{step}")
  if expected is not None:
    diffs = arch_match.config_differences(expected.to_dict(), meta.model)
    if diffs:
      raise arch_match.ArchitectureMismatchError(source, diffs)
  # Evaluation cannot run without a tokenizer: that line comes before anything else is built.
  tokenizer = tokenizer_from_json(meta.tokenizer) if need_tokenizer else None
  if setup is None:
    try:
      model_cfg = ModelConfig.from_dict(dict(meta.model))
    except (ConfigError, TypeError) as e:
      raise arch_match.ArchitectureMismatchError(source,
                                                 [f"model config unusable: {e}"]) from None
    setup = TrainSetup.build(model_cfg, optax.identity(), 0, mesh or default_mesh())
  arch_match.check(source, expected_config=setup.model_cfg.to_dict(),
                   expected_signature=setup.expected_signature(),
                   found_signature=ckpt.array_signature(step), found_model=meta.model,
                   found_tokenizer=meta.tokenizer, expected_tokenizer=expected_tokenizer)
  if tokenizer is None and meta.tokenizer is not None:
    tokenizer = tokenizer_from_json(meta.tokenizer)  # a DataError line, before arrays
  if tokenizer is not None:
    arch_match.check_tokenizer_fingerprint(source, meta.recorded_tokenizer_fingerprint,
                                           tokenizer.fingerprint())
  items = restore(ckpt, step, setup)
  diff = fingerprint.verify(source, meta, items["params"], f"{ckpt.directory}/{step}", tokenizer)
  return Verified(setup, meta, tokenizer, items, diff)


def load_for_eval(path: str, step: str | int = "latest", mesh: jax.sharding.Mesh | None = None,
                  expected: ModelConfig | None = None) -> Restored:
  """Rebuild, validate and restore a model for evaluation (`restore_verified` with the model
  the metadata describes); raises as it does, and DataError when no tokenizer is embedded."""
  ckpt = Checkpointer(checkpoint_dir(path), read_only=True)
  try:
    resolved = ckpt.resolve(step)
    got = restore_verified(ckpt, resolved, source=f"checkpoint {ckpt.directory}/{resolved}",
                           mesh=mesh, expected=expected, need_tokenizer=True)
  finally:
    ckpt.close()
  model = nnx.merge(got.setup.stored_graphdef, got.items["params"])
  return Restored(model, got.meta, got.tokenizer, resolved)


def verify_stored(path: str, step: str | int = "latest") -> float | None:
  """Prove a stored checkpoint's metadata against its tensors, fingerprint and tokenizer
  included, on this host's devices (what `pregate-inspect --quality` reports); -> the
  fingerprint difference, or None (with the one-line warning) when none is recorded. Raises
  like `load_for_eval`."""
  ckpt = Checkpointer(checkpoint_dir(path), read_only=True)
  try:
    resolved = ckpt.resolve(step)
    return restore_verified(ckpt, resolved,
                            source=f"checkpoint {ckpt.directory}/{resolved}"
                            ).fingerprint_difference
  finally:
    ckpt.close()
