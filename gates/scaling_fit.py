"""Fit L(N, D) = E + A/N^alpha + B/D^beta to (N, D, loss) points, as Hoffmann et al. (2022) did.

Their Approach 3: parameterise E, A, B by their logs (e, a, b), write the prediction as
log L = logsumexp(a - alpha log N, b - beta log D, e), and minimise the Huber loss (delta 1e-3)
between predicted and observed log losses with L-BFGS from a grid of initialisations, keeping
the best. The whole init grid is scored in one vectorised pass and L-BFGS runs from the best few
starts (a full L-BFGS per grid point costs minutes on a busy 2-core host for the same optimum).
Uncertainty is a bootstrap over the points (resample runs, refit from the best fit and the best
grid start). Pure: numpy and scipy only.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Sequence

import numpy as np
from scipy import optimize

from gates.adviser import Law

HUBER_DELTA = 1e-3
NAMES = ("E", "A", "B", "alpha", "beta")
# Hoffmann et al.'s init grid (4 x 5 x 5 x 4 x 4 = 1,600 starts), scored at once.
GRID = dict(e=(-1.0, -0.5, 0.0, 0.5), a=(0.0, 5.0, 10.0, 15.0, 20.0),
            b=(0.0, 5.0, 10.0, 15.0, 20.0), alpha=(0.0, 0.5, 1.0, 1.5),
            beta=(0.0, 0.5, 1.0, 1.5))
LBFGS_STARTS = 8


@dataclasses.dataclass(frozen=True)
class Fit:
  """Fitted constants, their bootstrap standard deviations and 5/95% bounds, and the data size."""

  law: Law
  std: dict[str, float]
  low: dict[str, float]
  high: dict[str, float]
  n_points: int
  objective: float
  bootstrap: int

  def to_dict(self) -> dict[str, Any]:
    return {"law": dataclasses.asdict(self.law), "std": self.std, "p05": self.low,
            "p95": self.high, "n_points": self.n_points, "objective": self.objective,
            "bootstrap": self.bootstrap, "form": "L(N, D) = E + A/N^alpha + B/D^beta"}

  def lines(self) -> list[str]:
    values = dataclasses.asdict(self.law)
    out = [f"fit of L(N, D) = E + A/N^alpha + B/D^beta on {self.n_points} runs "
           f"(Huber {HUBER_DELTA:g} on log loss, {self.bootstrap} bootstrap refits):"]
    for k in NAMES:
      out.append(f"  {k:5s} = {values[k]:.4g} +- {self.std[k]:.2g}  "
                 f"(90% {self.low[k]:.4g} .. {self.high[k]:.4g})")
    return out


def _huber(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Huber values and derivatives of the residuals r."""
  small = np.abs(r) <= HUBER_DELTA
  value = np.where(small, 0.5 * r * r, HUBER_DELTA * (np.abs(r) - 0.5 * HUBER_DELTA))
  grad = np.where(small, r, HUBER_DELTA * np.sign(r))
  return value, grad


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
  """[3, ..., points] log terms; theta may carry leading batch axes ([..., 5])."""
  e, a, b, alpha, beta = (theta[..., i, None] for i in range(5))
  return np.stack(np.broadcast_arrays(a - alpha * log_n, b - beta * log_d, e + 0 * log_n))


def _logsumexp(terms: np.ndarray) -> np.ndarray:
  top = terms.max(axis=0)
  return top + np.log(np.exp(terms - top).sum(axis=0))


def _grid_values(grid: np.ndarray, log_n, log_d, log_l) -> np.ndarray:
  return _huber(_logsumexp(_terms(grid, log_n, log_d)) - log_l)[0].sum(axis=-1)


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray
               ) -> tuple[float, np.ndarray]:
  terms = _terms(theta, log_n, log_d)
  pred = _logsumexp(terms)
  weights = np.exp(terms - pred)  # d pred / d term
  value, dh = _huber(pred - log_l)
  grad = np.array([np.sum(dh * weights[2]), np.sum(dh * weights[0]), np.sum(dh * weights[1]),
                   np.sum(dh * weights[0] * -log_n), np.sum(dh * weights[1] * -log_d)])
  return float(np.sum(value)), grad


def _minimise(starts, log_n, log_d, log_l) -> tuple[np.ndarray, float]:
  best, best_value = None, math.inf
  for start in starts:
    res = optimize.minimize(_objective, np.asarray(start, float), args=(log_n, log_d, log_l),
                            jac=True, method="L-BFGS-B",
                            options=dict(maxiter=2000, ftol=1e-15, gtol=1e-12))
    if res.fun < best_value:
      best, best_value = res.x, float(res.fun)
  return best, best_value


def _law(theta: np.ndarray) -> Law:
  e, a, b, alpha, beta = (float(x) for x in theta)
  return Law(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def fit(n_params: Sequence[float], tokens: Sequence[float], losses: Sequence[float],
        bootstrap: int = 100, seed: int = 0) -> Fit:
  """Fit the law to the points; raises ValueError for too few or non-positive points."""
  n, d, loss = (np.asarray(x, float) for x in (n_params, tokens, losses))
  if not n.shape == d.shape == loss.shape or n.ndim != 1:
    raise ValueError("n_params, tokens and losses must be equal-length sequences")
  if len(n) < 5:
    raise ValueError(f"fitting 5 constants needs at least 5 runs, got {len(n)}")
  if not (np.all(n > 0) and np.all(d > 0) and np.all(loss > 0) and np.all(np.isfinite(loss))):
    raise ValueError("every N, D and loss must be positive and finite")
  log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
  grid = np.asarray(list(itertools.product(*GRID.values())), float)
  order = np.argsort(_grid_values(grid, log_n, log_d, log_l))
  theta, value = _minimise(grid[order[:LBFGS_STARTS]], log_n, log_d, log_l)
  rng = np.random.default_rng(seed)
  samples = []
  for _ in range(bootstrap):
    idx = rng.integers(0, len(n), size=len(n))
    t, _ = _minimise([theta, grid[order[0]]], log_n[idx], log_d[idx], log_l[idx])
    law = _law(t)
    samples.append([law.E, law.A, law.B, law.alpha, law.beta])
  arr = np.asarray(samples) if samples else np.full((1, 5), np.nan)

  def stat(f) -> dict[str, float]:
    return {k: float(v) for k, v in zip(NAMES, f(arr))}

  return Fit(law=_law(theta), std=stat(lambda a: np.std(a, axis=0)),
             low=stat(lambda a: np.percentile(a, 5, axis=0)),
             high=stat(lambda a: np.percentile(a, 95, axis=0)), n_points=len(n),
             objective=value, bootstrap=bootstrap)
