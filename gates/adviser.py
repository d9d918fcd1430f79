"""The compute-budget adviser: for C FLOPs (and the unique data at hand), what N and D to train.

Without a data limit it is Chinchilla's split of C = 6 N D at the contract's tokens-per-parameter
ratio r: N = sqrt(C / (6 r)), D = r N. With U unique tokens known, the plan must also pass the
gate on effective tokens: D'(D, U) >= r N and D <= max_epochs * U. Spending all of C (D =
C / 6N), D' grows and r N shrinks as N shrinks, so the adviser takes the largest N that passes,
i.e. fewer parameters rather than more repetition; if even that needs more than max_epochs, it
plans exactly max_epochs and leaves the rest of the budget unspent (more data is the fix).

With a fitted law L(N, D) = E + A/N^a + B/D^b (gates.scaling_fit) it minimises L(N, D'(C/6N))
instead, within the same gate limits. Pure: the caller passes the gate's contract (ratio r,
max_epochs, R*; gates.chinchilla_contract).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from gates import effective
from gates.chinchilla_contract import ChinchillaContract


@dataclasses.dataclass(frozen=True)
class Law:
  """L(N, D) = E + A / N**alpha + B / D**beta (Hoffmann et al. 2022's form)."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float

  def loss(self, n: float, d: float) -> float:
    return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

  def optimal_n(self, flops: float) -> float:
    """argmin_N L(N, C / 6N): N = G (C/6)^(b/(a+b)), G = (a A / (b B))^(1/(a+b))."""
    a, b = self.alpha, self.beta
    g = (a * self.A / (b * self.B)) ** (1 / (a + b))
    return g * (flops / 6) ** (b / (a + b))


@dataclasses.dataclass(frozen=True)
class Advice:
  """A recommended split of a compute budget; `tokens` is D, `effective_tokens` D'."""

  budget_flops: float
  n_params: float
  tokens: float
  effective_tokens: float
  epochs: float | None
  flops_used: float
  limited_by: str  # "compute" | "data: effective floor" | "data: epoch limit"
  rule: str  # "contract ratio 20" | "fitted law"
  unconstrained_n: float

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _d_eff(contract: ChinchillaContract, tokens: float, unique: int | None) -> float:
  return tokens if unique is None else effective.effective_tokens(tokens, unique, contract.r_star)


def _bisect_largest(ok, lo: float, hi: float, iters: int = 200) -> float:
  """Largest x in [lo, hi] with ok(x), for ok true below some point and false above (log scale)."""
  if ok(hi):
    return hi
  llo, lhi = math.log(lo), math.log(hi)
  for _ in range(iters):
    mid = (llo + lhi) / 2
    llo, lhi = (mid, lhi) if ok(math.exp(mid)) else (llo, mid)
  return math.exp(llo)


def gate_max_n(contract: ChinchillaContract, flops: float, unique: int | None
               ) -> tuple[float, str]:
  """The largest N whose full-budget plan (D = C/6N) passes the gate, and what limits it."""
  r, max_epochs = contract.hard_floor_ratio, contract.max_epochs
  n_free = math.sqrt(flops / (6 * r))
  if unique is None or flops / (6 * n_free) <= unique:
    return n_free, "compute"
  n = _bisect_largest(lambda n: _d_eff(contract, flops / (6 * n), unique) >= r * n, 1.0, n_free)
  if flops / (6 * n) <= max_epochs * unique:
    return n, "data: effective floor"
  return _d_eff(contract, max_epochs * unique, unique) / r, "data: epoch limit"


def advise(contract: ChinchillaContract, flops: float, unique: int | None = None,
           law: Law | None = None) -> Advice:
  """Recommend N and D for a budget of `flops` FLOPs (C = 6 N D), given U unique tokens (None:
  unlimited data) and optionally a fitted law instead of the contract's ratio."""
  if not flops > 0 or not math.isfinite(flops):
    raise ValueError(f"budget must be a positive number of FLOPs, got {flops!r}")
  if unique is not None and (not isinstance(unique, int) or unique <= 0):
    raise ValueError(f"unique tokens must be a positive integer, got {unique!r}")
  r, max_epochs = contract.hard_floor_ratio, contract.max_epochs
  n_gate, limited = gate_max_n(contract, flops, unique)
  unconstrained = math.sqrt(flops / (6 * r)) if law is None else law.optimal_n(flops)
  if limited == "data: epoch limit":  # D is capped; any law then prefers the largest N allowed
    n, tokens = n_gate, float(max_epochs * unique)
  else:
    n = n_gate if law is None else _best_n(contract, law, flops, unique, n_gate)
    tokens = flops / (6 * n)
    if law is not None and n < n_gate * (1 - 1e-6):  # else the law's optimum is past the cap
      limited = "fitted law"
  return Advice(
      budget_flops=flops, n_params=n, tokens=tokens,
      effective_tokens=_d_eff(contract, tokens, unique),
      epochs=None if unique is None else tokens / unique, flops_used=6 * n * tokens,
      limited_by=limited, rule="fitted law" if law is not None else f"contract ratio {r}",
      unconstrained_n=unconstrained)


def _best_n(contract: ChinchillaContract, law: Law, flops: float, unique: int | None,
            n_max: float) -> float:
  """argmin over N <= n_max (and D <= max_epochs U) of L(N, D'(C/6N)): log-grid, then refine."""
  n_min = 1.0 if unique is None else max(1.0, flops / (6 * contract.max_epochs * unique))
  if n_min >= n_max:
    return n_max
  def loss(log_n: float) -> float:
    return law.loss(math.exp(log_n), _d_eff(contract, flops / (6 * math.exp(log_n)), unique))

  lo, hi = math.log(n_min), math.log(n_max)
  grid = [lo + (hi - lo) * i / 400 for i in range(401)]
  i = min(range(len(grid)), key=lambda k: loss(grid[k]))
  a, b = grid[max(i - 1, 0)], grid[min(i + 1, 400)]
  for _ in range(100):  # golden-section inside the bracketing cells
    m1, m2 = a + (b - a) * 0.382, a + (b - a) * 0.618
    a, b = (a, m2) if loss(m1) < loss(m2) else (m1, b)
  return math.exp((a + b) / 2)
