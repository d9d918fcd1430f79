"""INV-INIT-ARCH-MATCH-001: a checkpoint loads only if its architecture provably matches.

Pure comparisons of plain data: the checkpoint's recorded model config and tokenizer against the
configured ones, and the stored array signature (path -> shape, dtype, from orbax's metadata)
against the configured model's abstract state. Every difference is listed, not just the first.
"""
from __future__ import annotations

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
          found_signature: Signature, meta: Mapping[str, Any] | None,
          expected_tokenizer: Mapping[str, Any] | None = None) -> None:
  """Raise MissingMetadataError or ArchitectureMismatchError; return None on a proven match."""
  if not meta or "model" not in meta:
    raise MissingMetadataError(source)
  diffs = config_differences(expected_config, meta["model"])
  diffs += tokenizer_differences(expected_tokenizer, meta.get("tokenizer"))
  diffs += signature_differences(expected_signature, found_signature)
  if diffs:
    raise ArchitectureMismatchError(source, diffs)


class InitEvalMismatchError(PregateError):
  """Restored parameters do not reproduce the validation loss recorded at save time."""


# Relative tolerance of the step-0 check by compute dtype. Same data, same batches, same params:
# the only differences left are reduction order (device count, XLA fusion choices) and the
# compute dtype's rounding. fp32 keeps ~7 significant digits, so 1e-4 leaves 100x headroom;
# bf16 activations round at 2^-8 ~ 4e-3 per op, but token-averaged loss errors stay well under
# 1e-2 (measured figures in BUILD_NOTES.md). A tampered or mismatched tensor moves the loss by
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
