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
  FingerprintMismatchError when only behaviour shows it), CheckpointError (damaged arrays).
  """
  ckpt = Checkpointer(checkpoint_dir(path), read_only=True)
  try:
    resolved = ckpt.resolve(step)
    source = f"checkpoint {ckpt.directory}/{resolved}"
    meta = metadata.require(ckpt.read_meta(resolved), f"{ckpt.directory}/{resolved}")
    if expected is not None:
      diffs = arch_match.config_differences(expected.to_dict(), meta["model"])
      if diffs:
        raise arch_match.ArchitectureMismatchError(source, diffs)
    try:
      model_cfg = ModelConfig.from_dict(meta["model"])
    except (ConfigError, TypeError) as e:
      raise arch_match.ArchitectureMismatchError(
          source, [f"model config unusable: {e}"]) from None
    setup = TrainSetup.build(model_cfg, optax.identity(), 0, mesh or default_mesh())
    validate(setup, ckpt, resolved, None)
    params_target, _ = setup.targets()
    params = ckpt.restore(resolved, params_target=params_target)["params"]
    fingerprint.verify(source, meta, params, f"{ckpt.directory}/{resolved}")
  finally:
    ckpt.close()
  model = nnx.merge(setup.graphdef, params)
  return Restored(model, meta, tokenizer_from_json(meta["tokenizer"]), resolved)
