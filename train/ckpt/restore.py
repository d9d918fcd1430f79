"""Programmatic restore for evaluation: `load_for_eval(path)` needs no config file.

The model is rebuilt from the checkpoint's own metadata, the stored tensors are proven to match
that architecture (and `expected`, when given) before any array is read, the parameters are
restored onto the current devices whatever topology saved them, and the functional fingerprint
is recomputed under the metadata's model: metadata that is wrong in a field no shape shows
(rope_theta, norm_eps, compute dtype, head split) is refused, not loaded as another model.
Every evaluation-side consumer (pregate-eval, pregate-sample, export, a teacher) comes here.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax
from flax import nnx

from core.errors import ConfigError
from gates import arch_match
from models.config import ModelConfig
from models.transformer import Transformer
from train.ckpt import fingerprint, metadata
from train.ckpt.checkpointer import Checkpointer
from train.ckpt.resume import validate
from train.ckpt.stepspec import checkpoint_dir
from train.data.tokenizer import Tokenizer, tokenizer_from_json
from train.state import sharding
from train.state.setup import TrainSetup


class Restored(NamedTuple):
  model: Transformer
  meta: dict[str, Any]
  tokenizer: Tokenizer
  step: int


def default_mesh() -> jax.sharding.Mesh:
  """All local devices on the data axis: parameters replicated, batches split."""
  return sharding.make_mesh((jax.local_device_count(), 1, 1), jax.local_devices())


def load_for_eval(path: str, step: str | int = "latest", mesh: jax.sharding.Mesh | None = None,
                  expected: ModelConfig | None = None) -> Restored:
  """Rebuild, validate and restore a model for evaluation.

  Raises MissingMetadataError (no pregate metadata), ArchitectureMismatchError (tensors differ
  from the metadata's architecture, or metadata differs from `expected`; its subclass
  FingerprintMismatchError when only behaviour shows it), CheckpointError (damaged arrays),
  DataError (no usable tokenizer).
  """
  ckpt = Checkpointer(checkpoint_dir(path), read_only=True)
  try:
    resolved = ckpt.resolve(step)
    meta = metadata.require(ckpt.read_meta(resolved), f"{ckpt.directory}/{resolved}")
    if expected is not None:
      diffs = arch_match.config_differences(expected.to_dict(), meta["model"])
      if diffs:
        raise arch_match.ArchitectureMismatchError(f"checkpoint {ckpt.directory}/{resolved}",
                                                   diffs)
    tokenizer = tokenizer_from_json(meta.get("tokenizer"))  # a DataError line, before arrays
    setup, params, _ = _verified_params(ckpt, resolved, meta, mesh or default_mesh())
  finally:
    ckpt.close()
  return Restored(nnx.merge(setup.stored_graphdef, params), meta, tokenizer, resolved)


def verify_stored(path: str, step: str | int = "latest") -> float | None:
  """Prove a stored checkpoint's metadata against its tensors, fingerprint included, on this
  host's devices (what `pregate-inspect --quality` reports); -> the fingerprint difference, or
  None (with the one-line warning) when none is recorded. Raises like `load_for_eval`."""
  ckpt = Checkpointer(checkpoint_dir(path), read_only=True)
  try:
    resolved = ckpt.resolve(step)
    meta = metadata.require(ckpt.read_meta(resolved), f"{ckpt.directory}/{resolved}")
    return _verified_params(ckpt, resolved, meta, default_mesh())[2]
  finally:
    ckpt.close()


def _verified_params(ckpt: Checkpointer, step: int, meta: dict[str, Any],
                     mesh: jax.sharding.Mesh) -> tuple[TrainSetup, Any, float | None]:
  """The model the metadata describes, its tensors proven (config, signature), restored onto
  `mesh` and fingerprint-verified; -> (setup, params, fingerprint difference or None)."""
  source = f"checkpoint {ckpt.directory}/{step}"
  try:
    model_cfg = ModelConfig.from_dict(meta["model"])
  except (ConfigError, TypeError) as e:
    raise arch_match.ArchitectureMismatchError(source, [f"model config unusable: {e}"]) from None
  setup = TrainSetup.build(model_cfg, optax.identity(), 0, mesh)
  validate(setup, ckpt, step, None)
  params = ckpt.restore(step, params_target=setup.targets()[0])["params"]
  diff = fingerprint.verify(source, meta, params, f"{ckpt.directory}/{step}")
  return setup, params, diff
