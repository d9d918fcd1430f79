"""The functional fingerprint: binds a checkpoint's metadata to what its tensors compute.

Shape checks cannot see the architecture fields that change no tensor shape (rope_theta,
norm_eps, the compute dtype, a head split scaled together). So every save records, and every
load path recomputes after restoring, float32 log-softmax summaries of the model on a fixed
probe input: for each of `batch x length` positions the log-probability of the probe's next
token and the largest log-probability. The probe is a pure function of a fixed seed and the
vocabulary size (no data on disk), and the model is the one the metadata describes
(`meta.model`), so a wrong non-shape field computes different numbers and is refused
(`gates.arch_match.check_fingerprint`, tolerance by compute dtype, measured in
docs/benchmarks.md).

The tokenizer is bound the same way: `tokenizer_probe` records a text (the embedded tokenizer's
decoding of the probe ids) and the model's log-probabilities of it as that tokenizer encodes it;
a load encodes the recorded text with the embedded tokenizer and must reproduce them, so a
tokenizer with ids reassigned or symbols replaced is refused even when every recorded
fingerprint was rewritten to match (`gates.arch_match.check_tokenizer_probe`). It reuses the
probe's shape, so it costs one more forward pass and no compile.

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

from core.errors import DataError
from gates import arch_match
from models.config import ModelConfig
from train.ckpt.metadata import Metadata
from train.data.tokenizer import Tokenizer
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


def _target_logp(params: Any, model_cfg: ModelConfig, host: np.ndarray
                 ) -> tuple[list[list[float]], list[list[float]]]:
  """The model's (next-token log-probability, largest log-probability) at every position of
  `host` [batch, length + 1], replicated where the parameters live."""
  out = _replicated(params)
  tokens = jax.make_array_from_callback(host.shape, out, lambda index: host[index])
  target, best = _summaries_fn(model_cfg, out)(params, tokens)
  return _rows(target), _rows(best)


def _text_ids(tokenizer: Tokenizer, text: str, shape: tuple[int, int]) -> np.ndarray | None:
  """`text` encoded by `tokenizer`, repeated or cut to `shape`; None if it does not encode or
  encodes to an id outside the tokenizer's vocabulary."""
  try:
    ids = np.asarray(tokenizer.encode(text), np.int32)
  except DataError:
    return None
  if not ids.size or ids.min() < 0 or ids.max() >= tokenizer.vocab_size:
    return None
  return np.resize(ids, shape)


def compute(params: Any, model_cfg: ModelConfig, spec: dict[str, int] | None = None, *,
            tokenizer: Tokenizer | None = None) -> dict[str, Any]:
  """The fingerprint record of `params` run as `model_cfg`, with the tokenizer probe when the
  checkpoint embeds `tokenizer` (collective when multi-process: every process calls it at the
  same point)."""
  spec = dict(spec or probe_spec(model_cfg))
  host = probe_tokens(spec, model_cfg.vocab_size)
  target, best = _target_logp(params, model_cfg, host)
  record = {"version": VERSION, "probe": spec, "dtype": model_cfg.dtype,
            "mean_nll": float(f"{-np.mean(target):.8g}"), "target_logp": target,
            "max_logp": best}
  if tokenizer is not None:
    text = tokenizer.decode([i for i in host.reshape(-1).tolist()
                             if i < tokenizer.vocab_size and i != tokenizer.eos_id])
    ids = _text_ids(tokenizer, text, host.shape)
    if ids is not None:
      record["tokenizer_probe"] = {"text": text,
                                   "target_logp": _target_logp(params, model_cfg, ids)[0]}
  return record


def unverified_line(source: str, fix_path: str) -> str:
  """The one-line warning for a checkpoint saved before fingerprints were recorded."""
  return (f"{source} has no functional fingerprint (saved before pregate recorded one), so "
          f"its non-shape fields ({', '.join('model.' + f for f in arch_match.NON_SHAPE_FIELDS)})"
          f" cannot be verified against its tensors; fix: re-stamp it (pregate-stamp {fix_path}"
          f" --config=<its config> --heldout=<text it never trained on>) or resume it once "
          f"with its data present, so the next save records one")


def verify(source: str, meta: Metadata, params: Any, fix_path: str,
           tokenizer: Tokenizer | None) -> float | None:
  """After a restore: recompute the fingerprint under `meta.model` and refuse a mismatch
  (FingerprintMismatchError), then the embedded `tokenizer`'s probe (TokenizerMismatchError);
  -> the fingerprint difference, or None (with a warning) when none is recorded."""
  recorded = meta.fingerprint
  if recorded is None:
    logging.warning(unverified_line(source, fix_path))
    return None
  problems = arch_match.fingerprint_problems(recorded)
  if problems:
    arch_match.check_fingerprint(source, recorded, {}, meta.model)  # raises, naming it
  model_cfg = ModelConfig.from_dict(dict(meta.model))
  measured = compute(params, model_cfg, recorded["probe"])
  diff = arch_match.check_fingerprint(source, recorded, measured, meta.model)
  if tokenizer is not None:
    _verify_tokenizer(source, recorded, params, model_cfg, tokenizer, fix_path)
  return diff


def _verify_tokenizer(source: str, recorded: dict[str, Any], params: Any,
                      model_cfg: ModelConfig, tokenizer: Tokenizer, fix_path: str) -> None:
  probe = recorded.get("tokenizer_probe")
  if probe is None:
    logging.warning(f"{source} records no tokenizer probe (saved before pregate recorded one), "
                    f"so its embedded tokenizer is checked against its recorded fingerprint "
                    f"only; fix: resume it once (or re-stamp it: pregate-stamp {fix_path}), so "
                    f"the next save records one")
    return
  spec = recorded["probe"]
  shape = (spec["batch"], spec["length"] + 1)
  text = probe.get("text") if isinstance(probe, dict) else None
  ids = _text_ids(tokenizer, text, shape) if isinstance(text, str) else None
  if ids is not None and ids.max() >= model_cfg.vocab_size:
    ids = None
  measured = None if ids is None else _target_logp(params, model_cfg, ids)[0]
  arch_match.check_tokenizer_probe(source, probe.get("target_logp") if isinstance(probe, dict)
                                   else None, measured, recorded["dtype"])
