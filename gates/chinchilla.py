"""The Chinchilla gate: refuse a run that plans too few effective tokens for its parameter count.

Hoffmann et al. (2022) found ~20 training tokens per parameter compute-optimal; a run far below
that spends its compute on a model its data cannot train. Since contract v1.2.0 the tokens are
effective tokens D' (Muennighoff et al. 2023): a run cannot pass by looping over a tiny corpus,
and no source may be repeated more than the contract's epoch limit. Every boundary is decided
exactly (integers, fractions, and refined rational intervals for the exp() in D', see
gates.effective); thresholds, R* of the D' formula, zone texts, rules, the bypass flag and the
version all come from gates/contracts/chinchilla-gate-v1.yaml, so the rule has one source of
truth. The caller loads it (core.contracts) and passes the parsed ChinchillaContract in
(gates.chinchilla_contract), so `evaluate` is a pure function of its arguments.

`passed` means every rule held. `bypassed` means some rule did not hold and the run proceeds
anyway because the operator set the bypass (`bypassed_rules` says which); a run that passes is
never `bypassed`, even with the flag set. A run proceeds iff `passed or bypassed`.

When the unique token counts U are unknown (before a BPE tokenizer is trained) the verdict is
decided on D; since D' <= D a refusal then is final, and `recheck` judges D' once U is known.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any, Mapping

from core.errors import ConfigError, GateRefusal
from gates import effective
from gates import verdict as verdict_lib
from gates.chinchilla_contract import CONTRACT, ChinchillaContract
from gates.effective import Interval
from gates.verdict import Prior, SourceUse, Verdict, ratio_text, warning_line

# The verdict's record and wording live in gates.verdict; they are part of this gate's interface.
__all__ = ["CONTRACT", "ChinchillaContract", "COMPUTE_OPTIMAL", "DEGENERATION", "EFFECTIVE_FLOOR",
           "EPOCH_LIMIT", "OVER_REPEATED", "PLATEAU", "RULES", "ZONES", "ChinchillaGateError",
           "Prior", "SourceUse", "Verdict", "enforce", "evaluate", "planned_tokens", "ratio_text",
           "recheck", "warning_line"]
DEGENERATION = "DEGENERATION"
PLATEAU = "PLATEAU"
OVER_REPEATED = "OVER_REPEATED"
COMPUTE_OPTIMAL = "COMPUTE_OPTIMAL"
ZONES = (DEGENERATION, PLATEAU, OVER_REPEATED, COMPUTE_OPTIMAL)
EFFECTIVE_FLOOR = "effective_floor"
EPOCH_LIMIT = "epoch_limit"
RULES = (EFFECTIVE_FLOOR, EPOCH_LIMIT)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def planned_tokens(train_steps: int, global_batch: int, seq_len: int) -> int:
  """D for the whole run (global_batch already includes gradient accumulation)."""
  for name, value in (("train_steps", train_steps), ("batch.global_batch", global_batch),
                      ("batch.seq_len", seq_len)):
    if not _is_int(value) or value <= 0:
      raise ConfigError(f"{name} must be a positive integer, got {value!r}")
  return train_steps * global_batch * seq_len


def _check_inputs(n_params: int, n_non_embedding: int, tokens: int, tokens_per_step: int) -> None:
  if not _is_int(n_params) or n_params <= 0:
    raise ValueError(f"n_params must be a positive integer, got {n_params!r}")
  if not _is_int(n_non_embedding) or not 0 <= n_non_embedding <= n_params:
    raise ValueError(f"n_non_embedding must be an integer in [0, n_params], "
                     f"got {n_non_embedding!r}")
  if not _is_int(tokens) or tokens < 0:
    raise ValueError(f"tokens must be a non-negative integer, got {tokens!r}")
  if not _is_int(tokens_per_step) or tokens_per_step <= 0:
    raise ValueError(f"tokens_per_step must be a positive integer, got {tokens_per_step!r}")


def _effective(tokens: int, srcs: tuple[effective.Source, ...], r_star: Fraction, prior: int = 0):
  """P + D' as a refinable interval function of the digits (D itself while U is unknown)."""
  if not srcs:
    return lambda digits: Interval.point(tokens + prior)
  return lambda digits: effective.total_interval(tokens, srcs, r_star, digits) + Interval.point(
      prior)


def _reaches(tokens: int, srcs, r_star: Fraction, target: int, prior: int = 0) -> bool:
  return effective.decide(_effective(tokens, srcs, r_star, prior), target)


def _max_steps(srcs, tokens_per_step: int, max_epochs: int) -> int | None:
  """The most train_steps with D_s <= max_epochs * U_s for every source (exact)."""
  limits = [Fraction(max_epochs * s.unique_tokens) / (s.weight * tokens_per_step)
            for s in srcs if s.weight]
  return min(int(limit) for limit in limits) if limits else None


def _steps_needed(target: int, srcs, r_star: Fraction, tokens_per_step: int,
                  max_steps: int | None, prior: int = 0) -> int | None:
  """Smallest s with P + D'(s * tokens_per_step) >= target; D' <= D bounds it below, D' grows
  with s, so a binary search decides it exactly. None if even max_steps falls short."""
  low = max(1, -(-(target - prior) // tokens_per_step))
  if not srcs:
    return low
  if max_steps is None or max_steps < low or not _reaches(max_steps * tokens_per_step, srcs,
                                                          r_star, target, prior):
    return None
  high = max_steps
  while low < high:
    mid = (low + high) // 2
    if _reaches(mid * tokens_per_step, srcs, r_star, target, prior):
      high = mid
    else:
      low = mid + 1
  return low


def _source_uses(tokens: int, srcs, r_star: Fraction, max_epochs: int) -> tuple[SourceUse, ...]:
  out = []
  for s in srcs:
    planned = tokens * s.weight
    out.append(SourceUse(
        name=s.name, weight=str(s.weight), tokens=float(planned), unique_tokens=s.unique_tokens,
        epochs=float(planned / s.unique_tokens),
        effective_tokens=effective.source_interval(planned, s.unique_tokens, r_star,
                                                   40).midpoint(),
        over_limit=planned > max_epochs * s.unique_tokens))
  return tuple(out)


def evaluate(contract: ChinchillaContract, n_params: int, n_non_embedding: int, tokens: int,
             tokens_per_step: int, bypass: bool = False,
             unique_tokens: Mapping[str, int] | None = None,
             weights: Mapping[str, float | int | str] | None = None,
             prior: Prior | None = None) -> Verdict:
  """Judge a planned run under `contract`; pure.

  `unique_tokens` maps each source to its unique train tokens U_s (None: unknown yet, judge D);
  `weights` its mixture weight (optional for one source). `prior` is a warm start's P: the
  floor judges P + D', the epoch limit only the new run's own D_s."""
  _check_inputs(n_params, n_non_embedding, tokens, tokens_per_step)
  floor, max_epochs, r_star = contract.hard_floor_ratio, contract.max_epochs, contract.r_star
  p = 0 if prior is None else prior.tokens
  if not _is_int(p) or p < 0:
    raise ValueError(f"prior tokens must be a non-negative integer, got {p!r}")
  try:
    srcs = () if unique_tokens is None else effective.sources(unique_tokens, weights)
  except ValueError as e:
    raise ConfigError(f"chinchilla gate: {e}") from None
  d_eff = _effective(tokens, srcs, r_star, p)
  floor_ok = effective.decide(d_eff, floor * n_params)
  uses = _source_uses(tokens, srcs, r_star, max_epochs)
  failed = tuple(r for r, broken in ((EFFECTIVE_FLOOR, not floor_ok),
                                     (EPOCH_LIMIT, any(u.over_limit for u in uses))) if broken)
  if not effective.decide(d_eff, contract.degeneration_below * n_params):
    zone = DEGENERATION
  elif EPOCH_LIMIT in failed:
    zone = OVER_REPEATED
  elif not floor_ok:
    zone = PLATEAU
  else:
    zone = COMPUTE_OPTIMAL
  max_steps = _max_steps(srcs, tokens_per_step, max_epochs)
  n_max = None
  if max_steps is not None:
    n_max = effective.floor_of(lambda digits: _effective(
        max_steps * tokens_per_step, srcs, r_star, p)(digits).scaled(Fraction(1, floor)))
  d_new = _effective(tokens, srcs, r_star)
  eff = None if not srcs else d_new(40).midpoint()
  return Verdict(
      contract=contract, n_params=n_params, n_non_embedding=n_non_embedding, tokens=tokens,
      ratio=tokens / n_params, zone=zone, passed=not failed, bypassed=bool(bypass and failed),
      contract_version=contract.version, tokens_needed=floor * n_params,
      steps_needed=_steps_needed(floor * n_params, srcs, r_star, tokens_per_step, max_steps, p),
      tokens_per_step=tokens_per_step, floor_ratio=floor, effective_tokens=eff,
      effective_ratio=None if eff is None else eff / n_params,
      effective_ratio_text=None if not srcs else verdict_lib.interval_ratio_text(
          d_new, n_params),
      sources=uses, max_epochs=max_epochs, max_steps=max_steps, n_params_max=n_max,
      failed_rules=failed, bypassed_rules=failed if bypass else (), bypass_requested=bool(bypass),
      prior_tokens=p, prior_source="" if prior is None else prior.source,
      total_ratio_text=verdict_lib.interval_ratio_text(d_eff, n_params) if p else None)


def recheck(verdict: Verdict, unique_tokens: Mapping[str, int],
            weights: Mapping[str, float | int | str] | None = None) -> Verdict:
  """The verdict once U is known (right after data preparation, before any compile): the same
  plan, contract and bypass flag judged on D'. Pure; enforce() the result."""
  return evaluate(verdict.contract, verdict.n_params, verdict.n_non_embedding, verdict.tokens,
                  verdict.tokens_per_step, bypass=verdict.bypass_requested,
                  unique_tokens=unique_tokens, weights=weights, prior=verdict.prior)


def prior_from_record(contract: ChinchillaContract, gate: Mapping[str, Any] | None,
                      tokens_seen: int, source: str) -> Prior:
  """P of a warm start from a pregate checkpoint: its own recorded P plus the effective tokens
  of the `tokens_seen` it consumed, over the sources its gate recorded (their U and weights,
  under this contract's R*), floored to whole tokens; its consumed tokens as they are when its
  record has no unique counts (D' <= D, so never less than the truth allows)."""
  gate = gate or {}
  own = gate.get("prior_tokens") or 0
  uses = [s for s in gate.get("sources") or [] if isinstance(s, Mapping)]
  try:
    srcs = effective.sources({s["name"]: s["unique_tokens"] for s in uses},
                             {s["name"]: s["weight"] for s in uses}) if uses else ()
  except (KeyError, TypeError, ValueError):
    srcs = ()
  seen = effective.floor_of(_effective(tokens_seen, srcs, contract.r_star)) if srcs \
      else tokens_seen
  return Prior(int(own) + seen, source)


class ChinchillaGateError(GateRefusal):
  """The run plans too few effective tokens, or repeats data too often; exit 3, message is the
  one-line refusal."""

  def __init__(self, verdict: Verdict):
    super().__init__(verdict.message())
    self.verdict = verdict


def enforce(verdict: Verdict) -> Verdict:
  """Raise ChinchillaGateError unless the verdict lets the run proceed; returns the verdict."""
  if not verdict.proceeds:
    raise ChinchillaGateError(verdict)
  return verdict
