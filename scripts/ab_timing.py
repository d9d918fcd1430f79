"""Step-time A/B in one process, shared by the scripts/ab_*.py benchmarks.

Each variant is a compiled step, its state and its batches; the variants run in alternating
blocks of `block` steps, so load shared with other jobs on the machine hits them alike. A step
is timed like pregate-bench: dispatch plus reading the previous step's loss, so the host work
between steps counts and the device never waits on Python.
"""
from __future__ import annotations

import statistics
import time
from typing import Any


def warm(step: Any, state: Any, batches: list[Any], n: int) -> Any:
  """`n` untimed steps, each read back before the next: a deep queue of dispatched steps with
  collectives on XLA:CPU's two devices stalled in a rendezvous (the loop is never more than a
  step ahead either)."""
  import jax
  for i in range(n):
    state, m = step(state, batches[i % len(batches)])
    float(m["loss"])
  return jax.block_until_ready(state)


def alternate(runs: dict[Any, list[Any]], steps: int, block: int = 25) -> dict[Any, float]:
  """runs: name -> [compiled step, state, batches]; `steps` timed steps each. Returns the
  median milliseconds per step of each (each run's state is advanced in place)."""
  import jax
  times: dict[Any, list[float]] = {name: [] for name in runs}
  for _ in range(0, steps, block):
    for name, run in runs.items():
      step, state, batches = run[:3]
      prev = None
      for i in range(block):
        t = time.perf_counter()
        state, m = step(state, batches[i % len(batches)])
        if prev is not None:
          float(prev["loss"])
        prev = m
        times[name].append(time.perf_counter() - t)
      run[1] = jax.block_until_ready(state)
  return {name: 1e3 * statistics.median(t) for name, t in times.items()}
