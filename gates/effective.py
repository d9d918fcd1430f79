"""Effective tokens D' of repeated data, from the formula and constants in the gate's contract.

Muennighoff et al. (2023) value a token seen for the R-th repetition less than a fresh one; the
contract holds their formula (Python syntax, evaluated by gates.exact) so the rule's numbers live
in one reviewed file. Per source: a mixture draws D_s = D * w_s tokens from source s, whose U_s
unique tokens give D'_s; D' is the sum. Pure apart from reading the (cached) contract.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Mapping

from gates import contract_store as contracts
from gates import exact
from gates.exact import Interval

CONTRACT = "chinchilla-gate-v1"


@dataclasses.dataclass(frozen=True)
class Source:
  """One data source: its name, normalised mixture weight and unique train tokens U."""

  name: str
  weight: Fraction
  unique_tokens: int


def _spec() -> dict:
  spec = contracts.get_contract(CONTRACT).get("effective_tokens")
  if not isinstance(spec, dict) or not all(
      isinstance(spec.get(k), str) for k in ("repetitions", "formula")):
    raise contracts.ContractError(f"contract {CONTRACT}: effective_tokens needs `repetitions` and "
                                  f"`formula` strings")
  return spec


def _constants(spec: dict) -> dict[str, Interval]:
  out = {}
  for name, value in (spec.get("constants") or {}).items():
    try:
      out[name] = Interval.point(Fraction(str(value)))
    except (ValueError, ZeroDivisionError):
      raise contracts.ContractError(f"contract {CONTRACT}: constant {name}={value!r} is not a "
                                    f"number") from None
  return out


def r_star() -> float:
  """R*_D as a float, for reports."""
  return float(_constants(_spec())["R_star"].lo)


def sources(unique_tokens: Mapping[str, int], weights: Mapping[str, float | int | str] | None
            ) -> tuple[Source, ...]:
  """Validated sources, weights as exact fractions summing to 1 (one source: weight 1).

  Raises ValueError naming the problem (the caller turns it into a one-line refusal)."""
  if not unique_tokens:
    raise ValueError("unique_tokens must name at least one source")
  for name, u in unique_tokens.items():
    if not isinstance(u, int) or isinstance(u, bool) or u <= 0:
      raise ValueError(f"unique tokens of source {name!r} must be a positive integer, got {u!r}")
  if weights is None:
    if len(unique_tokens) > 1:
      raise ValueError(f"a mixture of {len(unique_tokens)} sources needs a weight per source")
    weights = {name: 1 for name in unique_tokens}
  if set(weights) != set(unique_tokens):
    raise ValueError(f"weights name sources {sorted(weights)} but unique tokens name "
                     f"{sorted(unique_tokens)}")
  exact_w = {}
  for name, w in weights.items():
    try:
      exact_w[name] = Fraction(str(w))
    except (ValueError, ZeroDivisionError):
      raise ValueError(f"weight of source {name!r} must be a number, got {w!r}") from None
    if exact_w[name] < 0:
      raise ValueError(f"weight of source {name!r} must be >= 0, got {w!r}")
  total = sum(exact_w.values())
  if total <= 0:
    raise ValueError(f"source weights must sum to > 0, got {dict(weights)}")
  return tuple(Source(name, exact_w[name] / total, unique_tokens[name]) for name in unique_tokens)


def source_interval(tokens: Fraction, unique: int, digits: int) -> Interval:
  """D'_s for D_s = tokens drawn from U = unique tokens, as an interval holding the true value."""
  spec = _spec()
  env = {**_constants(spec), "D": Interval.point(tokens), "U": Interval.point(unique)}
  env["R"] = exact.evaluate(spec["repetitions"], env, digits)
  return exact.evaluate(spec["formula"], env, digits)


def total_interval(tokens: int, srcs: tuple[Source, ...], digits: int) -> Interval:
  """D' = sum of D'_s over the sources for D planned tokens."""
  total = Interval.point(0)
  for s in srcs:
    if s.weight:
      total = total + source_interval(tokens * s.weight, s.unique_tokens, digits)
  return total


def effective_tokens(tokens: int | float, unique: int) -> float:
  """D' for one source in floats (reports and planners; decisions use the intervals)."""
  spec = _spec()
  env = {name: float(iv.lo) for name, iv in _constants(spec).items()}
  env.update(D=float(tokens), U=float(unique))
  env["R"] = exact.evaluate_float(spec["repetitions"], env)
  return exact.evaluate_float(spec["formula"], env)
