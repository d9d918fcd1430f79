"""Which source each training sequence comes from in a weighted mixture: stateless, so batch i
is still a pure function of (seed, i) and resume is exact.

Levanter's design: sequences are grouped in blocks of `block` consecutive sequence indices;
every block holds exactly `counts[s]` sequences of source s (the weights, rounded by largest
remainder, so each block's proportions are as close to the weights as `block` allows), in an
order permuted by (seed, block index). Sequence g of the run is position g % block of block
g // block. Realized proportions over any whole number of blocks are exactly counts / block.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from core.errors import DataError

DEFAULT_BLOCK = 2048
_MIX_STREAM = 0x313E  # a seed word of its own: block orders never reuse a window draw


def block_counts(weights: Sequence[float], block: int) -> np.ndarray:
  """Sequences per source in one block: weights * block, rounded by largest remainder (ties to
  the earlier source), summing to `block`."""
  w = np.asarray(weights, np.float64)
  if w.ndim != 1 or not w.size or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
    raise DataError(f"mixture weights {list(weights)} must be finite, >= 0 and sum to more "
                    "than 0; fix data.sources weights")
  if not isinstance(block, int) or block < 1:
    raise DataError(f"data.mixture_block={block!r} must be a positive integer, e.g. "
                    f"{DEFAULT_BLOCK}")
  exact = w / w.sum() * block
  counts = np.floor(exact).astype(np.int64)
  short = block - int(counts.sum())
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:short]] += 1
  return counts


class Assignment:
  """Source id of every sequence index, for one (weights, block, seed, stream)."""

  def __init__(self, weights: Sequence[float], block: int, seed: int,
               stream: tuple[int, ...] = ()):
    self.counts = block_counts(weights, block)
    self.block, self.seed, self.stream = int(block), int(seed), tuple(stream)
    self._ordered = np.repeat(np.arange(len(self.counts)), self.counts)
    self._cache: dict[int, np.ndarray] = {}

  def _block(self, b: int) -> np.ndarray:
    """Block b's source order (the last few are kept: a batch touches one or two blocks)."""
    if b not in self._cache:
      if len(self._cache) >= 8:
        self._cache.pop(next(iter(self._cache)))
      rng = np.random.default_rng([self.seed, b, _MIX_STREAM, *self.stream])
      self._cache[b] = rng.permutation(self._ordered)
    return self._cache[b]

  def sources(self, first: int, n: int) -> np.ndarray:
    """Source ids of sequences first .. first + n - 1."""
    idx = np.arange(first, first + n, dtype=np.int64)
    blocks, pos = np.divmod(idx, self.block)
    out = np.empty(n, np.int64)
    for b in np.unique(blocks):
      sel = blocks == b
      out[sel] = self._block(int(b))[pos[sel]]
    return out

  def totals(self, n: int) -> np.ndarray:
    """Sequences per source among the first n (exact: whole blocks by count, plus the part)."""
    full, rest = divmod(int(n), self.block)
    out = self.counts * full
    if rest:
      out = out + np.bincount(self._block(full)[:rest], minlength=len(self.counts))
    return out


def plan(names: Sequence[str], weights: Sequence[float], unique_tokens: Sequence[int], *,
         steps: int, global_batch: int, seq_len: int, block: int, seed: int
         ) -> dict[str, dict[str, float | int]]:
  """Per source: weight, planned tokens (sequences drawn x seq_len), unique train tokens and
  epochs over them; the start-up log and checkpoint metadata show it."""
  if len(names) == 1:
    seqs = np.array([steps * global_batch])
  else:
    seqs = Assignment(weights, block, seed).totals(steps * global_batch)
  total_w = float(sum(weights))
  return {n: {"weight": float(w) / total_w, "planned_tokens": int(s) * seq_len,
              "unique_tokens": int(u), "epochs": int(s) * seq_len / max(int(u), 1)}
          for n, w, u, s in zip(names, weights, unique_tokens, seqs)}
