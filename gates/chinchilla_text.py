"""The Chinchilla gate's one-line messages: pass, refusal and bypass warning.

Every line names the zone, N, D, D' and the epochs per source, and (when the run does not pass)
the rules broken and a fix that can actually work: more train_steps only while the epoch limit
allows them, else a smaller model or more unique data. Ratios are truncated, never rounded, so
a refused 19.999 never prints as 20.00.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from gates import contract_store as contracts
from gates import exact

if TYPE_CHECKING:
  from gates.chinchilla import Verdict

CONTRACT = "chinchilla-gate-v1"


def ratio_text(tokens: int, n_params: int) -> str:
  """D/N to 2 decimals, truncated (not rounded)."""
  hundredths = tokens * 100 // n_params
  return f"{hundredths // 100}.{hundredths % 100:02d}"


def interval_ratio_text(value: Callable[[int], exact.Interval], n_params: int) -> str:
  """D'/N to 2 decimals, truncated exactly (D' is irrational when data repeats)."""
  scale = exact.Interval.point(100) / exact.Interval.point(n_params)
  hundredths = exact.floor_of(lambda digits: value(digits) * scale)
  return f"{hundredths // 100}.{hundredths % 100:02d}"


def _contract() -> dict:
  return contracts.get_contract(CONTRACT)


def _zone_text(zone: str) -> str:
  spec = _contract().get("zones", {}).get(zone, {})
  return f"{spec.get('range', '?')}: {spec.get('meaning', '?')}"


def _bypass_flag() -> str:
  return _contract()["bypass"]["flag"]


def _tag(v: Verdict) -> str:
  return f"[contract {_contract()['contract']} v{v.contract_version}]"


def _ratios(v: Verdict, comparison: str = "") -> str:
  """'D/N = 21.06 >= 20', or with U known "D'/N = 18.22 < 20 (D/N = 21.06)"."""
  d_ratio = ratio_text(v.tokens, v.n_params)
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
  return out


def _rules(v: Verdict, rules: tuple[str, ...]) -> str:
  texts = _contract().get("rules", {})
  return "; ".join(f"{r}: {texts.get(r, '?')}" for r in rules)


def _fix(v: Verdict) -> str:
  per_step = (f"at the configured global_batch x seq_len = {v.tokens_per_step:,} "
              f"tokens/step")
  target = f"{v.floor_ratio}*N = {v.tokens_needed:,}"
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


def pass_line(v: Verdict) -> str:
  return (f"chinchilla gate passed: {v.zone} zone, {_ratios(v, _floor_comparison(v))} with "
          f"{_sizes(v)} {_tag(v)}")


def refusal_line(v: Verdict) -> str:
  return (f"chinchilla gate refused the run: {v.zone} zone ({_zone_text(v.zone)}); broken: "
          f"{_rules(v, v.failed_rules)}; {_ratios(v, _floor_comparison(v))} with {_sizes(v)}; "
          f"fix: {_fix(v)}; pass {_bypass_flag()} to run anyway {_tag(v)}")


def warning_line(v: Verdict) -> str:
  return (f"WARNING: chinchilla gate bypassed by {_bypass_flag()} (rules bypassed: "
          f"{', '.join(v.bypassed_rules)}): {v.zone} zone ({_zone_text(v.zone)}); "
          f"{_ratios(v, _floor_comparison(v))} with {_sizes(v)}; fix: {_fix(v)} {_tag(v)}")
