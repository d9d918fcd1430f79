"""The Chinchilla gate's verdict and its one-line messages: pass, refusal and bypass warning.

Every line names the zone, N, D, D' and the epochs per source, and (when the run does not pass)
the rules broken and a fix that can actually work: more train_steps only while the epoch limit
allows them, else a smaller model or more unique data. Ratios are truncated, never rounded, so
a refused 19.999 never prints as 20.00. gates.chinchilla decides; this module only records and
words the decision, so it imports nothing from it. The texts (zones, rules, the bypass flag) come
from the contract the verdict was decided under, which the verdict carries.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, Callable

from gates import effective
from gates.chinchilla_contract import ChinchillaContract
from gates.effective import Interval


@dataclasses.dataclass(frozen=True)
class SourceUse:
  """How a run uses one source: D_s planned tokens over U_s unique ones, and D'_s."""

  name: str
  weight: str
  tokens: float
  unique_tokens: int
  epochs: float
  effective_tokens: float
  over_limit: bool


@dataclasses.dataclass(frozen=True)
class Prior:
  """P, the tokens a warm start's initial weights already saw (contract v1.3): effective tokens,
  whole, counted toward the floor beside the new run's D'; `source` says where P comes from (a
  checkpoint's record, or a declared --init_tokens)."""

  tokens: int
  source: str


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What the gate decided and every number needed to explain or fix it.

  `tokens` is D; `effective_tokens` is D' (None while U is unknown, when the gate judged D).
  `steps_needed` is the smallest train_steps reaching floor * N effective tokens (None when no
  step count does within the epoch limit); `max_steps` is the epoch limit in steps and
  `n_params_max` the largest N that the data supports at it (both None while U is unknown).
  `contract` is the rule it was decided under (not part of the record: its name is)."""

  contract: ChinchillaContract = dataclasses.field(repr=False)
  n_params: int
  n_non_embedding: int
  tokens: int
  ratio: float
  zone: str
  passed: bool
  bypassed: bool
  contract_version: str
  tokens_needed: int
  steps_needed: int | None
  tokens_per_step: int
  floor_ratio: int
  effective_tokens: float | None = None
  effective_ratio: float | None = None
  effective_ratio_text: str | None = None
  sources: tuple[SourceUse, ...] = ()
  max_epochs: int = 0
  max_steps: int | None = None
  n_params_max: int | None = None
  failed_rules: tuple[str, ...] = ()
  bypassed_rules: tuple[str, ...] = ()
  bypass_requested: bool = False
  prior_tokens: int = 0  # P: a warm start's earlier tokens (the floor judges P + D')
  prior_source: str = ""
  total_ratio_text: str | None = None  # (P + D')/N, truncated; None for a fresh run

  @property
  def prior(self) -> Prior | None:
    return Prior(self.prior_tokens, self.prior_source) if self.prior_tokens else None

  @property
  def proceeds(self) -> bool:
    return self.passed or self.bypassed

  @property
  def unique_tokens_known(self) -> bool:
    return bool(self.sources)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready record (gate.json, metrics.jsonl, checkpoint metadata)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "contract"}
    d["sources"] = [dataclasses.asdict(s) for s in self.sources]
    d["failed_rules"], d["bypassed_rules"] = list(self.failed_rules), list(self.bypassed_rules)
    return {**d, "proceeds": self.proceeds, "unique_tokens_known": self.unique_tokens_known,
            "contract": self.contract.name}

  def message(self) -> str:
    """One line: the pass line, the refusal line, or (bypassed) the warning line."""
    if not self.passed:
      return _warning_line(self) if self.bypassed else _refusal_line(self)
    return _pass_line(self)


def warning_line(verdict: Verdict) -> str:
  """The line to print when an under-provisioned run proceeds because of the bypass."""
  if verdict.passed:
    raise ValueError("warning_line is for a verdict that did not pass the gate")
  return _warning_line(verdict)


def ratio_text(tokens: int, n_params: int) -> str:
  """D/N to 2 decimals, truncated (not rounded)."""
  hundredths = tokens * 100 // n_params
  return f"{hundredths // 100}.{hundredths % 100:02d}"


def interval_ratio_text(value: Callable[[int], Interval], n_params: int) -> str:
  """D'/N to 2 decimals, truncated exactly (D' is irrational when data repeats)."""
  scale = Fraction(100, n_params)
  hundredths = effective.floor_of(lambda digits: value(digits).scaled(scale))
  return f"{hundredths // 100}.{hundredths % 100:02d}"


def _tag(v: Verdict) -> str:
  return f"[contract {v.contract.name} v{v.contract_version}]"


def _ratios(v: Verdict, comparison: str = "") -> str:
  """'D/N = 21.06 >= 20', or with U known "D'/N = 18.22 < 20 (D/N = 21.06)"; a warm start
  "(P + D')/N = 23.10 >= 20 (D'/N = 1.35, D/N = 1.35)"."""
  d_ratio = ratio_text(v.tokens, v.n_params)
  if v.prior_tokens:
    d, new = (("D'", f"D'/N = {v.effective_ratio_text}, D/N = {d_ratio}") if v.sources
              else ("D", f"D/N = {d_ratio}"))
    return f"(P + {d})/N = {v.total_ratio_text}{comparison} ({new})"
  if not v.sources:
    return f"D/N = {d_ratio}{comparison}"
  return f"D'/N = {v.effective_ratio_text}{comparison} (D/N = {d_ratio})"


def _floor_comparison(v: Verdict) -> str:
  return f" < {v.floor_ratio}" if "effective_floor" in v.failed_rules else f" >= {v.floor_ratio}"


def _sizes(v: Verdict) -> str:
  out = (f"N = {v.n_params:,} parameters ({v.n_non_embedding:,} non-embedding), "
         f"D = {v.tokens:,} tokens")
  if v.sources:
    epochs = ", ".join(f"{s.name} {s.epochs:.2f} epochs over U = {s.unique_tokens:,}"
                       for s in v.sources)
    out += f", D' = {v.effective_tokens:,.0f} effective tokens ({epochs})"
  else:
    out += " (unique tokens not known yet: D' is judged after data preparation)"
  if v.prior_tokens:
    out += f", P = {v.prior_tokens:,} tokens the initial weights already saw ({v.prior_source})"
  return out


def _rules(v: Verdict, rules: tuple[str, ...]) -> str:
  return "; ".join(f"{r}: {v.contract.rule_text(r)}" for r in rules)


def _fix(v: Verdict) -> str:
  per_step = (f"at the configured global_batch x seq_len = {v.tokens_per_step:,} "
              f"tokens/step")
  target = f"{v.floor_ratio}*N = {v.tokens_needed:,}"
  if v.prior_tokens:
    target += f" - P = {max(v.tokens_needed - v.prior_tokens, 0):,}"
  if not v.sources:
    return (f"reaching {target} tokens needs train_steps >= {v.steps_needed:,} {per_step} (or "
            f"shrink the model)")
  if v.steps_needed is None:
    return (f"no train_steps reaches D' >= {target} effective tokens within {v.max_epochs} epochs "
            f"of the unique data (train_steps <= {v.max_steps:,} {per_step}): shrink the model "
            f"to N <= {v.n_params_max:,} parameters or add unique data")
  return (f"reaching D' >= {target} effective tokens needs train_steps >= {v.steps_needed:,} "
          f"and the {v.max_epochs}-epoch limit allows train_steps <= {v.max_steps:,}, {per_step} "
          f"(or shrink the model)")


def _pass_line(v: Verdict) -> str:
  return (f"chinchilla gate passed: {v.zone} zone, {_ratios(v, _floor_comparison(v))} with "
          f"{_sizes(v)} {_tag(v)}")


def _refusal_line(v: Verdict) -> str:
  return (f"chinchilla gate refused the run: {v.zone} zone ({v.contract.zone_text(v.zone)}); "
          f"broken: {_rules(v, v.failed_rules)}; {_ratios(v, _floor_comparison(v))} with "
          f"{_sizes(v)}; fix: {_fix(v)}; pass {v.contract.bypass_flag} to run anyway {_tag(v)}")


def _warning_line(v: Verdict) -> str:
  return (f"WARNING: chinchilla gate bypassed by {v.contract.bypass_flag} (rules bypassed: "
          f"{', '.join(v.bypassed_rules)}): {v.zone} zone ({v.contract.zone_text(v.zone)}); "
          f"{_ratios(v, _floor_comparison(v))} with {_sizes(v)}; fix: {_fix(v)} {_tag(v)}")
