"""INV-INIT-ARCH-MATCH-001: a checkpoint loads only if its architecture provably matches.

Pure comparisons of plain data: the checkpoint's recorded model config and tokenizer against the
configured ones, and the stored array signature (path -> shape, dtype, from orbax's metadata)
against the configured model's abstract state. Every difference is listed, not just the first.
Then the decisions on numbers measured elsewhere: the step-0 loss check, the functional
fingerprint (what the tensors compute under the recorded architecture, which proves the fields
no shape shows) and pregate-stamp's held-out proof.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from core.errors import PregateError

# Fields of ModelConfig that define the architecture (dtype for compute does not change tensors).
ARCH_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
               "max_seq_len", "rope_theta", "tie_embeddings", "param_dtype", "norm_eps",
               "family", "qkv_bias")
# Fields added after checkpoints existed, with the value every older checkpoint had: metadata
# written before `family` existed describes a Llama without biases (its tensors prove it).
ARCH_DEFAULTS = {"family": "llama", "qkv_bias": False}
Signature = Mapping[str, tuple[tuple[int, ...], str]]


class ArchitectureMismatchError(PregateError):
  """The checkpoint's architecture (metadata or tensors) differs from the configured one."""

  def __init__(self, source: str, differences: list[str]):
    self.differences = differences
    super().__init__(f"{source} does not match the configured model ({len(differences)} "
                     f"difference(s)): " + "; ".join(differences) +
                     ". Fix the config to match the checkpoint, or use a matching checkpoint")


class MissingMetadataError(PregateError):
  """A checkpoint without pregate metadata: its architecture cannot be proven."""

  def __init__(self, source: str):
    super().__init__(f"{source} has no pregate metadata, so its architecture cannot be "
                     f"verified; stamp it with `pregate-stamp {source} "
                     f"--config=<the config it was trained with>`")


def config_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
  out = []
  found = {**ARCH_DEFAULTS, **found}
  for name in ARCH_FIELDS:
    if name not in found:
      out.append(f"model.{name}: expected {expected.get(name)!r} found <missing>")
    elif expected.get(name) != found[name]:
      out.append(f"model.{name}: expected {expected.get(name)!r} found {found[name]!r}")
  return out


def tokenizer_differences(expected: Mapping[str, Any] | None,
                          found: Mapping[str, Any] | None) -> list[str]:
  if expected is None or expected == found:
    return []
  def show(t):
    if not t:
      return "<missing>"
    vocab = t.get("vocab")
    return f"{t.get('type')}" + (f" ({len(vocab)} symbols)" if vocab is not None else "")
  detail = show(expected) if show(expected) != show(found) else "vocabulary differs"
  return [f"tokenizer: expected {detail if detail != show(expected) else show(expected)} "
          f"found {show(found) if detail == show(expected) else 'same size, other symbols'}"]


def signature_differences(expected: Signature, found: Signature) -> list[str]:
  """Tensor-by-tensor comparison; a dtype difference counts (orbax would cast silently)."""
  out = []
  for path in sorted(set(expected) | set(found)):
    if path not in found:
      out.append(f"tensor {path}: expected {_fmt(expected[path])} found <missing>")
    elif path not in expected:
      out.append(f"tensor {path}: expected <absent> found {_fmt(found[path])}")
    elif tuple(expected[path][0]) != tuple(found[path][0]) or \
        str(expected[path][1]) != str(found[path][1]):
      out.append(f"tensor {path}: expected {_fmt(expected[path])} found {_fmt(found[path])}")
  return out


def _fmt(sig: tuple[tuple[int, ...], str]) -> str:
  return f"{sig[1]}{list(sig[0])}"


def check(source: str, *, expected_config: Mapping[str, Any], expected_signature: Signature,
          found_signature: Signature, found_model: Mapping[str, Any],
          found_tokenizer: Mapping[str, Any] | None,
          expected_tokenizer: Mapping[str, Any] | None = None) -> None:
  """Raise ArchitectureMismatchError listing every difference; return None on a proven match.
  Plain values in (the recorded model config and tokenizer, as the checkpoint's metadata
  holds them): gates/ decides and never reads the metadata record itself."""
  diffs = config_differences(expected_config, found_model)
  diffs += tokenizer_differences(expected_tokenizer, found_tokenizer)
  diffs += signature_differences(expected_signature, found_signature)
  if diffs:
    raise ArchitectureMismatchError(source, diffs)


class InitEvalMismatchError(PregateError):
  """Restored parameters do not reproduce the validation loss recorded at save time."""


# Relative tolerance of the step-0 check by compute dtype. Same data, same batches, same params:
# the only differences left are reduction order (device count, XLA fusion choices) and the
# compute dtype's rounding. fp32 keeps ~7 significant digits, so 1e-4 leaves 100x headroom;
# bf16 activations round at 2^-8 ~ 4e-3 per op, but token-averaged loss errors stay well under
# 1e-2 (measured figures in docs/benchmarks.md). A tampered or mismatched tensor moves the loss by
# far more than either.
INIT_EVAL_RTOL = {"float32": 1e-4, "bfloat16": 1e-2, "float16": 1e-2}


def check_init_eval(source: str, recorded: float, measured: float, compute_dtype: str) -> float:
  """Raise InitEvalMismatchError when |measured - recorded| exceeds the dtype's tolerance."""
  rtol = INIT_EVAL_RTOL.get(compute_dtype, 1e-2)
  diff = abs(measured - recorded)
  if not diff <= rtol * max(abs(recorded), 1.0):
    raise InitEvalMismatchError(
        f"{source}: step-0 validation loss {measured:.6f} differs from the recorded "
        f"{recorded:.6f} by {diff:.2e} (tolerance {rtol:g} relative, {compute_dtype} compute) "
        f"on the same validation batches; the parameters are not the ones that were saved. "
        f"Use an intact checkpoint")
  return diff


# The functional fingerprint (train/ckpt/fingerprint.py records it at every save and stamp):
# float32 log-softmax summaries of the model on a fixed probe input. Fields that change no
# tensor shape, so only the model's behaviour can prove them:
NON_SHAPE_FIELDS = ("rope_theta", "norm_eps", "dtype", "n_heads", "n_kv_heads")
FINGERPRINT_KEYS = ("target_logp", "max_logp")

# Largest allowed |measured - recorded| / max(1, |recorded|) over every probe value, by compute
# dtype; a record and a claim in different dtypes get the tighter one. Same parameters, same
# probe: only reduction order (device count, mesh split, XLA fusion) and rounding remain.
# Measured on the default experiment (docs/benchmarks.md): float32
# 0 on data-parallel meshes of 1-8 devices and 2 processes, <= 3.1e-6 with fsdp/tensor splits
# (1e-4 leaves 30x), while the smallest edit tried moved 6.0e-3 (float32 -> float16 compute;
# norm_eps 1e-5 -> 1e-6 1.5e-2, rope_theta and head splits 0.5-3). bfloat16 differed by up to
# 7.2e-3 across splits (one rounding flip, fsdp=8), hence 5e-2.
FINGERPRINT_TOL = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 5e-2}


class FingerprintMismatchError(ArchitectureMismatchError):
  """The metadata does not describe the tensors: every shape matches, but under the recorded
  architecture the parameters do not compute what they computed when they were saved."""

  def __init__(self, source: str, message: str):
    self.differences = [message]
    PregateError.__init__(self, f"{source}: {message}")


def _grid(x: Any, batch: int, length: int) -> bool:
  return (isinstance(x, list) and len(x) == batch and all(
      isinstance(r, list) and len(r) == length and all(
          isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in r)
      for r in x))


def fingerprint_problems(record: Any) -> list[str]:
  """Why a recorded fingerprint cannot be compared (empty when it can)."""
  if not isinstance(record, dict):
    return ["the fingerprint is not a JSON object"]
  probe = record.get("probe")
  if not isinstance(probe, dict) or not all(
      isinstance(probe.get(k), int) and probe[k] >= 1 for k in ("batch", "length", "seed")):
    return ["fingerprint.probe must hold positive integers batch, length and seed"]
  if probe["batch"] * probe["length"] > 4096:
    return [f"fingerprint.probe is {probe['batch']}x{probe['length']} tokens; at most 4096"]
  bad = [k for k in FINGERPRINT_KEYS if not _grid(record.get(k), probe["batch"],
                                                   probe["length"])]
  if bad:
    return [f"fingerprint.{', '.join(bad)} must be {probe['batch']} lists of {probe['length']} "
            f"finite numbers"]
  if record.get("dtype") not in FINGERPRINT_TOL:
    return [f"fingerprint.dtype {record.get('dtype')!r} is not one of {list(FINGERPRINT_TOL)}"]
  return []


def fingerprint_difference(recorded: Mapping[str, Any], measured: Mapping[str, Any],
                           keys: tuple[str, ...] = FINGERPRINT_KEYS) -> float:
  """max |measured - recorded| / max(1, |recorded|) over every probe value of both summaries."""
  worst = 0.0
  for key in keys:
    for rec_row, got_row in zip(recorded[key], measured[key], strict=True):
      for a, b in zip(rec_row, got_row, strict=True):
        diff = abs(b - a) / max(1.0, abs(a))
        if math.isnan(diff):  # a NaN measured value matches nothing
          return math.inf
        worst = max(worst, diff)
  return worst


def fingerprint_tolerance(recorded_dtype: str, claimed_dtype: str) -> float:
  return min(FINGERPRINT_TOL.get(recorded_dtype, 1e-4), FINGERPRINT_TOL.get(claimed_dtype, 1e-4))


def suspects(model: Mapping[str, Any]) -> str:
  """The non-shape fields as claimed, for a message: the likely culprits of a mismatch."""
  return (f"model.rope_theta={model.get('rope_theta')!r}, model.norm_eps="
          f"{model.get('norm_eps')!r}, compute model.dtype={model.get('dtype')!r}, head split "
          f"model.n_heads/n_kv_heads={model.get('n_heads')!r}/{model.get('n_kv_heads')!r}")


def check_fingerprint(source: str, recorded: Any, measured: Mapping[str, Any],
                      model: Mapping[str, Any]) -> float:
  """Raise FingerprintMismatchError unless the probe values recomputed under the claimed
  architecture `model` reproduce the recorded ones within the dtype tolerance; -> difference."""
  problems = fingerprint_problems(recorded)
  if problems:
    raise FingerprintMismatchError(
        source, f"its functional fingerprint is malformed ({problems[0]}), so the metadata "
        f"cannot be proven to describe the tensors. Re-stamp it with pregate-stamp, the config "
        f"it was trained with and held-out text (--heldout)")
  tol = fingerprint_tolerance(recorded["dtype"], str(model.get("dtype")))
  diff = fingerprint_difference(recorded, measured)
  if not diff <= tol:
    raise FingerprintMismatchError(
        source, f"the metadata does not describe the tensors: every shape and dtype matches, but "
        f"under the recorded architecture the parameters' probe log-probabilities differ from "
        f"the ones recorded at {recorded.get('by', 'save')} by {diff:.3g} (tolerance {tol:g}, "
        f"{recorded['dtype']} recorded, {model.get('dtype')} claimed). Likely a wrong non-shape "
        f"field: {suspects(model)}; or the arrays changed after save. Restore the metadata the "
        f"checkpoint was saved with (pregate-stamp keeps a metadata.bak-*), or re-stamp it with "
        f"the config it was trained with")
  return diff


# pregate-stamp's held-out proof (train/ckpt/heldout.py measures, this decides). A claimed
# architecture is refused when its held-out loss is at least RANDOM_FRACTION of ln V (uniform
# predictions: an untrained model, or a trained one scrambled by a wrong field), when it is
# further than the stated relative tolerance from the loss the operator states, or when another
# config with the same tensor shapes scores lower by more than BETTER_BY nats (run-to-run noise
# is ~1e-5 nats; a wrong head split or rope_theta on a trained model costs far more).
RANDOM_FRACTION = 0.95
BETTER_BY = 0.02


def stamp_proof_problems(loss: float, vocab_size: int, expected: float | None, tolerance: float,
                         alternatives: Mapping[str, float]) -> list[str]:
  """Why the held-out evaluation refutes the claimed config (empty when it stands)."""
  out = []
  random = math.log(vocab_size)
  if not loss < RANDOM_FRACTION * random:
    out.append(f"held-out loss {loss:.4f} is near the random level ln V = {random:.4f} (at least"
               f" {RANDOM_FRACTION:g} of it): run as this config the tensors compute no trained "
               f"model, so a non-shape field ({', '.join(NON_SHAPE_FIELDS)}) is likely wrong")
  if expected is not None and not abs(loss - expected) <= tolerance * abs(expected):
    out.append(f"held-out loss {loss:.4f} is far from the stated {expected:.4f} (more than "
               f"{tolerance:g} relative)")
  better = {k: v for k, v in alternatives.items() if v < loss - BETTER_BY}
  if better:
    out.append("the same tensors score clearly better as " + ", ".join(
        f"{k} (loss {v:.4f} vs {loss:.4f})" for k, v in sorted(better.items(),
                                                               key=lambda kv: kv[1])))
  return out


class TokenizerMismatchError(FingerprintMismatchError):
  """The embedded tokenizer is not the one the model was trained and saved with: its
  fingerprint differs from the recorded one, or the tensors score the recorded probe text,
  encoded by it, differently from what they scored at save."""


def check_tokenizer_fingerprint(source: str, recorded: str | None, embedded: str) -> None:
  """Refuse an embedded tokenizer whose fingerprint is not the data record's (None: the
  checkpoint records none, a stamp or an import)."""
  if recorded is not None and recorded != embedded:
    raise TokenizerMismatchError(
        source, f"its embedded tokenizer (fingerprint {embedded[:12]}) is not the one its data "
        f"record names ({recorded[:12]}): the tokenizer was replaced after save. Restore the "
        f"checkpoint's original metadata, or use an intact checkpoint")


def check_tokenizer_probe(source: str, recorded: Any, measured: list[list[float]] | None,
                          recorded_dtype: str) -> float:
  """Refuse unless the probe text, encoded by the embedded tokenizer (`measured` None: it does
  not encode), scores as recorded at save within the fingerprint tolerance; -> difference."""
  how = ("the embedded tokenizer cannot encode the probe text recorded at save"
         if measured is None else None)
  diff = math.inf
  if measured is not None and not _grid(recorded, len(measured), len(measured[0])):
    how = "its recorded tokenizer probe is malformed"
  elif measured is not None:
    diff = fingerprint_difference({"target_logp": recorded}, {"target_logp": measured},
                                  ("target_logp",))
    tol = fingerprint_tolerance(recorded_dtype, recorded_dtype)
    if not diff <= tol:
      how = (f"the probe text recorded at save, encoded by the embedded tokenizer, scores "
             f"differently (by {diff:.3g}, tolerance {tol:g})")
  if how:
    raise TokenizerMismatchError(
        source, f"{how}: the embedded tokenizer is not the one the model was saved with (ids "
        f"reassigned or symbols replaced). Restore the checkpoint's original metadata, or use "
        f"an intact checkpoint")
  return diff
