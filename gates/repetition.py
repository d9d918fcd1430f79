"""Data repetition report: how many epochs a run makes over its unique tokens, and their worth.

Not a gate: the Chinchilla gate counts every planned token, but a token seen for the fifth time
teaches less than a fresh one. Muennighoff et al. (2023, "Scaling Data-Constrained Language
Models") fit the value of repeated data as effective tokens
  D' = U + U * R* * (1 - exp(-R / R*)),  R = D/U - 1 repetitions,  R* = 15.4,
and found repeated tokens lose value fast past ~4 epochs. Pure: no I/O.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

R_STAR = 15.4
EPOCH_WARNING = 4.0
CITATION = "Muennighoff et al. 2023, Scaling Data-Constrained Language Models"


def effective_tokens(tokens: int, unique_tokens: int, r_star: float = R_STAR) -> float:
  """D' (see module docstring); equals D while no token is repeated (D <= U)."""
  if tokens <= unique_tokens:
    return float(tokens)
  repetitions = tokens / unique_tokens - 1
  return unique_tokens + unique_tokens * r_star * (1 - math.exp(-repetitions / r_star))


@dataclasses.dataclass(frozen=True)
class RepetitionReport:
  """Epochs over the unique data, effective tokens and D'/N; `source` says where U came from."""

  tokens: int
  unique_tokens: int
  epochs: float
  effective_tokens: float
  n_params: int | None
  effective_ratio: float | None
  warning: bool
  source: str

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def lines(self) -> list[str]:
    out = [f"data: D = {self.tokens:,} planned tokens over U = {self.unique_tokens:,} unique train "
           f"tokens ({self.source}) = {self.epochs:.2f} epochs"]
    effective = (f"data: effective tokens D' = {self.effective_tokens:,.0f} "
                 f"(data-constrained scaling, R* = {R_STAR})")
    if self.effective_ratio is not None:
      effective += f", D'/N = {self.effective_ratio:.2f}"
    out.append(effective)
    if self.warning:
      out.append(f"WARNING: {self.epochs:.2f} epochs > {EPOCH_WARNING:g}: repeated tokens lose "
                 f"value fast past ~{EPOCH_WARNING:g} epochs ({CITATION}); add unique data or "
                 f"plan fewer tokens")
    return out


def report(tokens: int, unique_tokens: int, n_params: int | None = None,
           source: str = "given") -> RepetitionReport:
  """The repetition report for D planned tokens over U unique train tokens (and N, if known)."""
  if unique_tokens <= 0:
    raise ValueError(f"unique_tokens must be positive, got {unique_tokens!r}")
  if tokens < 0:
    raise ValueError(f"tokens must be non-negative, got {tokens!r}")
  if n_params is not None and n_params <= 0:
    raise ValueError(f"n_params must be positive, got {n_params!r}")
  epochs = tokens / unique_tokens
  d_eff = effective_tokens(tokens, unique_tokens)
  return RepetitionReport(
      tokens=tokens, unique_tokens=unique_tokens, epochs=epochs, effective_tokens=d_eff,
      n_params=n_params, effective_ratio=None if n_params is None else d_eff / n_params,
      warning=epochs > EPOCH_WARNING, source=source)
