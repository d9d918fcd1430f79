"""Exact decisions on formulas that hold exp(): rational interval arithmetic, refined on demand.

A gate boundary must not depend on float rounding: at D' = 20 N exactly the run passes, one token
below it is refused. The effective-token formula (Muennighoff et al. 2023) holds exp(), so D' is
irrational whenever data repeats; a comparison is decided by evaluating the formula as an
interval of Fractions that surely holds the true value, and narrowing the interval (more decimal
digits for exp) until it lies on one side of the threshold. exp of a nonzero rational is never
rational (Lindemann), so a tie is possible only where the interval is a point, which compares
exactly.

Formulas are data (from a contract YAML) in Python expression syntax: numbers, names, + - * /,
unary minus and the calls exp(), max(), min(); nothing else parses.
"""
from __future__ import annotations

import ast
import dataclasses
import decimal
import functools
import math
from fractions import Fraction
from typing import Callable, Mapping

_START_DIGITS = 40
_MAX_DIGITS = 5000


class FormulaError(ValueError):
  """A formula that uses syntax outside the small arithmetic language above."""


@dataclasses.dataclass(frozen=True)
class Interval:
  """A closed interval [lo, hi] of rationals holding a true value."""

  lo: Fraction
  hi: Fraction

  @staticmethod
  def point(value: Fraction | int | str) -> Interval:
    v = Fraction(value)
    return Interval(v, v)

  def __add__(self, o: Interval) -> Interval:
    return Interval(self.lo + o.lo, self.hi + o.hi)

  def __sub__(self, o: Interval) -> Interval:
    return Interval(self.lo - o.hi, self.hi - o.lo)

  def __neg__(self) -> Interval:
    return Interval(-self.hi, -self.lo)

  def __mul__(self, o: Interval) -> Interval:
    products = (self.lo * o.lo, self.lo * o.hi, self.hi * o.lo, self.hi * o.hi)
    return Interval(min(products), max(products))

  def __truediv__(self, o: Interval) -> Interval:
    if o.lo <= 0 <= o.hi:
      raise ZeroDivisionError("division by an interval that holds 0")
    return self * Interval(1 / o.hi, 1 / o.lo)

  def midpoint(self) -> float:
    return float((self.lo + self.hi) / 2)


def _to_decimal(q: Fraction, ctx: decimal.Context, rounding: str) -> decimal.Decimal:
  c = ctx.copy()
  c.rounding = rounding
  return c.divide(decimal.Decimal(q.numerator), decimal.Decimal(q.denominator))


def _exp_bound(q: Fraction, digits: int, upper: bool) -> Fraction:
  """A rational bound on exp(q): Decimal.exp is correctly rounded, so one ulp outward holds it."""
  ctx = decimal.Context(prec=digits, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
  x = _to_decimal(q, ctx, decimal.ROUND_CEILING if upper else decimal.ROUND_FLOOR)
  r = ctx.exp(x)
  return Fraction(ctx.next_plus(r) if upper else ctx.next_minus(r))


_FAR_NEGATIVE = -700  # below this exp(q) < 2^-1000: bounded by powers of two, not decimals
_EXTREME = -100_000  # below this exp(q) is bounded by [0, exp(_EXTREME)] (see decide)


def _exp_far_negative(q: Fraction, upper: bool) -> Fraction:
  """Positive power-of-two bounds on exp(q) for q << 0 (exp(q) = 2^(q / ln 2), 1/ln 2 =
  1.442695...): a decimal exp there would be a rational with ~|q|/2.3 digits in its denominator.
  Strictly positive, so a tie with exp(q) = 0 never looks possible."""
  bits = -q * Fraction(14426, 10000) if upper else -q * Fraction(14427, 10000)
  return Fraction(1, 2 ** (int(bits) if upper else -(-bits.numerator // bits.denominator)))


def exp_interval(x: Interval, digits: int) -> Interval:
  """exp is increasing, so [exp(lo), hi's upper bound]; exp(0) is exactly 1."""

  def bound(q: Fraction, upper: bool) -> Fraction:
    if q == 0:
      return Fraction(1)
    if q < _EXTREME:
      return _exp_far_negative(Fraction(_EXTREME), True) if upper else Fraction(0)
    if q < _FAR_NEGATIVE:
      return _exp_far_negative(q, upper)
    return _exp_bound(q, digits, upper)

  return Interval(max(bound(x.lo, False), Fraction(0)), bound(x.hi, True))


_BINOPS = {ast.Add: Interval.__add__, ast.Sub: Interval.__sub__, ast.Mult: Interval.__mul__,
           ast.Div: Interval.__truediv__}
_CALLS = ("exp", "max", "min")


def _check(node: ast.AST, names: set[str]) -> None:
  if isinstance(node, ast.Expression):
    _check(node.body, names)
  elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
    _check(node.left, names)
    _check(node.right, names)
  elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
    _check(node.operand, names)
  elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
    pass
  elif isinstance(node, ast.Name):
    names.add(node.id)
  elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        and node.func.id in _CALLS and not node.keywords
        and len(node.args) == (1 if node.func.id == "exp" else 2)):
    for arg in node.args:
      _check(arg, names)
  else:
    raise FormulaError(f"unsupported syntax {ast.unparse(node)!r}: formulas use numbers, names, "
                       f"+ - * /, unary minus, exp(x), max(a, b), min(a, b)")


@functools.cache
def parse(text: str) -> tuple[ast.Expression, frozenset[str]]:
  """The checked syntax tree and the free names of one formula."""
  try:
    tree = ast.parse(text, mode="eval")
  except SyntaxError as e:
    raise FormulaError(f"formula {text!r} does not parse: {e.msg}") from None
  names: set[str] = set()
  _check(tree, names)
  return tree, frozenset(names - set(_CALLS))


def evaluate(text: str, env: Mapping[str, Interval], digits: int = _START_DIGITS) -> Interval:
  """The formula as an interval, given an interval for every free name."""
  tree, names = parse(text)
  missing = sorted(names - set(env))
  if missing:
    raise FormulaError(f"formula {text!r} needs values for {missing}")

  def ev(node: ast.AST) -> Interval:
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.BinOp):
      return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.UnaryOp):
      return -ev(node.operand)
    if isinstance(node, ast.Constant):
      return Interval.point(Fraction(str(node.value)))  # str: 15.4 means 154/10, not a binary float
    if isinstance(node, ast.Name):
      return env[node.id]
    args = [ev(a) for a in node.args]
    if node.func.id == "exp":
      return exp_interval(args[0], digits)
    pick = max if node.func.id == "max" else min
    return Interval(pick(args[0].lo, args[1].lo), pick(args[0].hi, args[1].hi))

  return ev(tree)


def evaluate_float(text: str, env: dict[str, float]) -> float:
  """The formula in floats (planners and reports, never a gate decision)."""
  tree, names = parse(text)
  missing = sorted(names - set(env))
  if missing:
    raise FormulaError(f"formula {text!r} needs values for {missing}")

  def ev(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.BinOp):
      a, b = ev(node.left), ev(node.right)
      return {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}.get(type(node.op)) \
          if not isinstance(node.op, ast.Div) else a / b
    if isinstance(node, ast.UnaryOp):
      return -ev(node.operand)
    if isinstance(node, ast.Constant):
      return float(node.value)
    if isinstance(node, ast.Name):
      return float(env[node.id])
    args = [ev(a) for a in node.args]
    if node.func.id == "exp":
      return math.exp(args[0]) if args[0] > -745 else 0.0
    return (max if node.func.id == "max" else min)(args)

  return ev(tree)


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
