"""The functional fingerprint: binds a checkpoint's metadata to what its tensors compute.

Shape checks cannot see the architecture fields that change no tensor shape (rope_theta,
norm_eps, the compute dtype, a head split scaled together). So every save records, and every
load path recomputes after restoring, float32 log-softmax summaries of the model on a fixed
probe input: for each of `batch x length` positions the log-probability of the probe's next
token and the largest log-probability. The probe is a pure function of a fixed seed and the
vocabulary size (no data on disk), and the model is the one the metadata describes
(`meta["model"]`), so a wrong non-shape field computes different numbers and is refused
(`gates.arch_match.check_fingerprint`, tolerance by compute dtype, measured in
BUILD_NOTES, restore integrity).

The probe runs on the parameters where they are (any mesh, any process count): the tokens are
replicated over the parameters' mesh and the summaries come back replicated, so every process
reads the same record. Cost: one small forward pass (2 x 64 tokens) plus its compile, cached per
model config and placement.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from gates import arch_match
from models.config import ModelConfig
from train.state import step as step_lib

VERSION = 1
PROBE_SEED = 1_600_016  # fixed forever: changing it invalidates every recorded fingerprint
PROBE_BATCH = 2
PROBE_LENGTH = 64  # capped by the model's max_seq_len when that is shorter


def probe_spec(model_cfg: ModelConfig) -> dict[str, int]:
  return {"seed": PROBE_SEED, "batch": PROBE_BATCH,
          "length": min(PROBE_LENGTH, model_cfg.max_seq_len)}


def probe_tokens(spec: dict[str, int], vocab_size: int) -> np.ndarray:
  """[batch, length + 1] int32 token ids drawn from (seed, vocab size): inputs and targets."""
  rng = np.random.default_rng([spec["seed"], vocab_size])
  return rng.integers(0, vocab_size, size=(spec["batch"], spec["length"] + 1), dtype=np.int32)


@functools.lru_cache(maxsize=16)
def _summaries_fn(model_cfg: ModelConfig, out_sharding: jax.sharding.Sharding) -> Any:
  graphdef = step_lib.stored_graphdef(model_cfg)

  def summaries(params: Any, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return target, jnp.max(logp, axis=-1)

  return jax.jit(summaries, out_shardings=(out_sharding, out_sharding))


def _replicated(params: Any) -> jax.sharding.Sharding:
  """A sharding that puts a whole array on every device the parameters live on."""
  leaf = jax.tree.leaves(params)[0]
  sharding = getattr(leaf, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  if sharding is not None and len(sharding.device_set) == 1:
    return sharding
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _rows(x: jax.Array) -> list[list[float]]:
  """A replicated [batch, length] array -> nested lists of floats (8 significant digits: the
  rounding, 5e-9 relative, is far below every tolerance)."""
  local = np.asarray(x.addressable_data(0), np.float32)
  return [[float(f"{v:.8g}") for v in row] for row in local.tolist()]


def compute(params: Any, model_cfg: ModelConfig,
            spec: dict[str, int] | None = None) -> dict[str, Any]:
  """The fingerprint record of `params` run as `model_cfg` (collective when multi-process:
  every process calls it at the same point)."""
  spec = dict(spec or probe_spec(model_cfg))
  out = _replicated(params)
  host = probe_tokens(spec, model_cfg.vocab_size)
  tokens = jax.make_array_from_callback(host.shape, out, lambda index: host[index])
  target, best = _summaries_fn(model_cfg, out)(params, tokens)
  rows = _rows(target)
  return {"version": VERSION, "probe": spec, "dtype": model_cfg.dtype,
          "mean_nll": float(f"{-np.mean(rows):.8g}"), "target_logp": rows,
          "max_logp": _rows(best)}


def unverified_line(source: str, fix_path: str) -> str:
  """The one-line warning for a checkpoint saved before fingerprints were recorded."""
  return (f"{source} has no functional fingerprint (saved before pregate recorded one), so "
          f"its non-shape fields ({', '.join('model.' + f for f in arch_match.NON_SHAPE_FIELDS)})"
          f" cannot be verified against its tensors; fix: re-stamp it (pregate-stamp {fix_path}"
          f" --config=<its config> --heldout=<text it never trained on>) or resume it once "
          f"with its data present, so the next save records one")


def verify(source: str, meta: dict[str, Any], params: Any, fix_path: str) -> float | None:
  """After a restore: recompute the fingerprint under `meta["model"]` and refuse a mismatch
  (FingerprintMismatchError); -> the difference, or None (with a warning) when none is
  recorded."""
  recorded = meta.get("fingerprint")
  if recorded is None:
    logging.warning(unverified_line(source, fix_path))
    return None
  problems = arch_match.fingerprint_problems(recorded)
  if problems:
    arch_match.check_fingerprint(source, recorded, {}, meta["model"])  # raises, naming it
  model_cfg = ModelConfig.from_dict(meta["model"])
  measured = compute(params, model_cfg, recorded["probe"])
  return arch_match.check_fingerprint(source, recorded, measured, meta["model"])
