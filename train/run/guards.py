"""Run guards at the loop's edges: non-finite losses, disk space, and damaged checkpoints.

A poisoned or partial state must never replace the last good checkpoint: these checks run
before each save and raise typed errors the command prints as one line.
"""
from __future__ import annotations

import math
import shutil
from typing import Any, Callable

import jax

from core.errors import DiskSpaceError, NonFiniteLossError


class NonFiniteGuard:
  """Stop at the first non-finite step, or (skip_limit > 0) count skipped updates and stop
  once more than skip_limit were skipped."""

  def __init__(self, skip_limit: int, skipped: int = 0):
    self.skip_limit = skip_limit
    self.skipped = skipped

  def check(self, step: int, loss: float, grad_norm: float, skipped: int,
            param_norm: float = 0.0) -> None:
    self.skipped += skipped
    finite = math.isfinite(loss) and math.isfinite(grad_norm) and math.isfinite(param_norm)
    if self.skip_limit <= 0 and not finite:
      raise NonFiniteLossError(
          f"non-finite training step {step} (loss={loss}, grad_norm={grad_norm}, "
          f"param_norm={param_norm}); "
          f"the state of this step was not saved and the last good checkpoint is intact. "
          f"Lower optimizer.lr, raise warmup, or set optimizer.skip_nonfinite=N to skip such "
          f"updates")
    if self.skipped > self.skip_limit > 0:
      raise NonFiniteLossError(
          f"{self.skipped} non-finite updates skipped by step {step}, more than "
          f"optimizer.skip_nonfinite={self.skip_limit}; the run is diverging. Lower "
          f"optimizer.lr or raise warmup")


def state_bytes(tree: Any) -> int:
  """Global bytes of every array in a pytree (what a checkpoint of it writes, uncompressed)."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def check_disk(directory: str, needed: int, margin: float = 1.2,
               disk_usage: Callable[[str], Any] = shutil.disk_usage) -> None:
  """Refuse a save that the filesystem cannot hold (with a safety margin for metadata).
  disk_usage is a seam: tests pass one that reports a full disk."""
  free = disk_usage(directory).free
  if free < needed * margin:
    raise DiskSpaceError(
        f"only {free / 2**20:.1f} MiB free under {directory} but a checkpoint needs about "
        f"{needed * margin / 2**20:.1f} MiB; free disk space, then re-run the same command to "
        f"resume from the last complete checkpoint")
