"""Data repetition report: epochs over the unique tokens, and what the repeated tokens are worth.

A token seen for the fifth time teaches less than a fresh one. Muennighoff et al. (2023, "Scaling
Data-Constrained Language Models") fit the value of repeated data as effective tokens D'
(gates.effective; R* is in the Chinchilla gate's contract, which since v1.2.0 decides on D' and
refuses more than its epoch limit); this is the human-readable report `pregate-plan` prints
beside the verdict. Pure: the caller passes the gate's contract (R*, the epoch limit).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from gates import effective
from gates.chinchilla_contract import ChinchillaContract

CITATION = "Muennighoff et al. 2023, Scaling Data-Constrained Language Models"


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
  contract: ChinchillaContract = dataclasses.field(repr=False)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready; the contract is the rule it was judged by, not part of the record."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
            if f.name != "contract"}

  def lines(self) -> list[str]:
    out = [f"data: D = {self.tokens:,} planned tokens over U = {self.unique_tokens:,} unique train "
           f"tokens ({self.source}) = {self.epochs:.2f} epochs"]
    line = (f"data: effective tokens D' = {self.effective_tokens:,.0f} "
            f"(data-constrained scaling, R* = {float(self.contract.r_star):g})")
    if self.effective_ratio is not None:
      line += f", D'/N = {self.effective_ratio:.2f}"
    out.append(line)
    if self.warning:
      limit = self.contract.max_epochs
      out.append(f"WARNING: {self.epochs:.2f} epochs > {limit}: repeated tokens lose "
                 f"value fast past ~{limit} epochs ({CITATION}); add unique data or "
                 f"plan fewer tokens")
    return out


def report(contract: ChinchillaContract, tokens: int, unique_tokens: int,
           n_params: int | None = None, source: str = "given") -> RepetitionReport:
  """The repetition report for D planned tokens over U unique train tokens (and N, if known)."""
  if unique_tokens <= 0:
    raise ValueError(f"unique_tokens must be positive, got {unique_tokens!r}")
  if tokens < 0:
    raise ValueError(f"tokens must be non-negative, got {tokens!r}")
  if n_params is not None and n_params <= 0:
    raise ValueError(f"n_params must be positive, got {n_params!r}")
  epochs = tokens / unique_tokens
  d_eff = effective.effective_tokens(tokens, unique_tokens, contract.r_star)
  return RepetitionReport(
      tokens=tokens, unique_tokens=unique_tokens, epochs=epochs, effective_tokens=d_eff,
      n_params=n_params, effective_ratio=None if n_params is None else d_eff / n_params,
      warning=tokens > contract.max_epochs * unique_tokens, source=source, contract=contract)
