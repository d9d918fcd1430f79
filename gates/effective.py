"""Effective tokens D' of repeated data, decided exactly; R* is the gate contract's constant.

Muennighoff et al. (2023, eq. 5) value a token seen for the R-th repetition less than a fresh
one: D' = min(D, U) + U R* (1 - exp(-R / R*)) with R = max(D / U - 1, 0) repetitions. The
contract holds R* and the citation; the formula is the reviewed Python below. Per source: a
mixture draws D_s = D * w_s tokens from source s, whose U_s unique tokens give D'_s; D' is the
sum.

A gate boundary must not depend on float rounding: at D' = 20 N exactly the run passes, one token
below it is refused. D' holds exp(), so it is irrational whenever data repeats; a comparison is
decided on an interval of Fractions that surely holds the true value, narrowed (more decimal
digits for exp) until it lies on one side of the threshold. exp of a nonzero rational is never
rational (Lindemann), so a tie is possible only where the interval is a point, which compares
exactly. Pure: R* is an argument (gates.chinchilla_contract holds it).
"""
from __future__ import annotations

import dataclasses
import decimal
import math
from fractions import Fraction
from typing import Callable, Mapping

_START_DIGITS = 40
_MAX_DIGITS = 5000
_FAR_NEGATIVE = -700  # below this exp(q) < 2^-1000: bounded by powers of two, not decimals
_EXTREME = -100_000  # below this exp(q) is bounded by [0, exp(_EXTREME)] (see decide)


@dataclasses.dataclass(frozen=True)
class Interval:
  """A closed interval [lo, hi] of rationals holding a true value."""

  lo: Fraction
  hi: Fraction

  @staticmethod
  def point(value: Fraction | int) -> Interval:
    v = Fraction(value)
    return Interval(v, v)

  def __add__(self, o: Interval) -> Interval:
    return Interval(self.lo + o.lo, self.hi + o.hi)

  def scaled(self, factor: Fraction | int) -> Interval:
    """The interval times a factor >= 0 (exact, so the order of the ends is kept)."""
    return Interval(self.lo * factor, self.hi * factor)

  def midpoint(self) -> float:
    return float((self.lo + self.hi) / 2)


@dataclasses.dataclass(frozen=True)
class Source:
  """One data source: its name, normalised mixture weight and unique train tokens U."""

  name: str
  weight: Fraction
  unique_tokens: int


def _exp_decimal(q: Fraction, digits: int, upper: bool) -> Fraction:
  """A rational bound on exp(q): Decimal.exp is correctly rounded, so one ulp outward holds it."""
  ctx = decimal.Context(prec=digits, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
  rounding = ctx.copy()
  rounding.rounding = decimal.ROUND_CEILING if upper else decimal.ROUND_FLOOR
  x = rounding.divide(decimal.Decimal(q.numerator), decimal.Decimal(q.denominator))
  r = ctx.exp(x)
  return Fraction(ctx.next_plus(r) if upper else ctx.next_minus(r))


def _exp_far_negative(q: Fraction, upper: bool) -> Fraction:
  """Positive power-of-two bounds on exp(q) for q << 0 (exp(q) = 2^(q / ln 2), 1/ln 2 =
  1.442695...): a decimal exp there would be a rational with ~|q|/2.3 digits in its denominator.
  Strictly positive, so a tie with exp(q) = 0 never looks possible."""
  bits = -q * Fraction(14426, 10000) if upper else -q * Fraction(14427, 10000)
  return Fraction(1, 2 ** (int(bits) if upper else -(-bits.numerator // bits.denominator)))


def exp_interval(q: Fraction, digits: int) -> Interval:
  """An interval holding exp(q); exp(0) is exactly 1."""

  def bound(upper: bool) -> Fraction:
    if q == 0:
      return Fraction(1)
    if q < _EXTREME:
      return _exp_far_negative(Fraction(_EXTREME), True) if upper else Fraction(0)
    if q < _FAR_NEGATIVE:
      return _exp_far_negative(q, upper)
    return _exp_decimal(q, digits, upper)

  return Interval(max(bound(False), Fraction(0)), bound(True))


def source_interval(tokens: Fraction, unique: int, r_star: Fraction, digits: int) -> Interval:
  """D'_s for D_s = tokens drawn from U = unique tokens, as an interval holding the true value."""
  tokens = Fraction(tokens)
  if tokens <= unique:  # R = 0: every token is fresh, D' = D
    return Interval.point(tokens)
  decay = exp_interval(-(tokens / unique - 1) / r_star, digits)  # exp(-R / R*)
  worth = unique * r_star  # what unlimited repetition of U adds at most
  return Interval(unique + worth * (1 - decay.hi), unique + worth * (1 - decay.lo))


def effective_tokens(tokens: int | float, unique: int, r_star: Fraction) -> float:
  """D' for one source in floats (reports and planners; decisions use the intervals)."""
  d, u, r_star = float(tokens), float(unique), float(r_star)
  r = max(d / u - 1, 0.0)
  x = -r / r_star
  return min(d, u) + u * r_star * (1 - (math.exp(x) if x > -745 else 0.0))


def total_interval(tokens: int, srcs: tuple[Source, ...], r_star: Fraction, digits: int
                   ) -> Interval:
  """D' = sum of D'_s over the sources for D planned tokens."""
  total = Interval.point(0)
  for s in srcs:
    if s.weight:
      total = total + source_interval(tokens * s.weight, s.unique_tokens, r_star, digits)
  return total


def decide(value: Callable[[int], Interval], threshold: Fraction | int) -> bool:
  """Whether value >= threshold, exactly: `value(digits)` is refined until the interval lies on
  one side. A point interval compares exactly. An interval that stops narrowing (only an exp
  argument below _EXTREME, i.e. data repeated > 10^6 times, can do that) answers False: a gate
  passes only what it has proven."""
  digits, previous = _START_DIGITS, None
  while True:
    iv = value(digits)
    if iv.lo >= threshold:
      return True
    if iv.hi < threshold or iv == previous or digits >= _MAX_DIGITS:
      return False
    previous, digits = iv, digits * 2


def floor_of(value: Callable[[int], Interval]) -> int:
  """floor(value), refined as `decide` does; the lower end's floor if refining stops helping
  (used for truncated printouts)."""
  digits, previous = _START_DIGITS, None
  while True:
    iv = value(digits)
    lo, hi = iv.lo.__floor__(), iv.hi.__floor__()
    if lo == hi or iv == previous or digits >= _MAX_DIGITS:
      return lo
    previous, digits = iv, digits * 2


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
