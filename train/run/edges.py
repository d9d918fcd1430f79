"""The loop's edges, each a small named state machine, so the loop body reads top to bottom.

- `Termination`: why a run ended (also the guard failures), recorded in metrics and metadata.
- `is_due`: "is it time" for an every-N-steps edge (always true on the last step).
- `MetricsPipe`: the step's device metrics are read one step late (the device never waits for
  Python), each read passing through the non-finite guard.
- `ThroughputWindow`: tokens/s over the steps since the last log line, with the time spent at
  edges (eval, logging, saves) paused out.
- `EvalTracker`: best val loss and early stopping.
- `Signals`: SIGTERM/SIGINT (and multi-host preemption) stop the loop at one agreed step.
"""
from __future__ import annotations

import dataclasses
import enum
import signal
import time
from typing import Any, Callable

import jax
from absl import logging

from core.errors import CheckpointError, DiskSpaceError, NonFiniteLossError
from train.ckpt.checkpointer import Checkpointer
from train.run.guards import NonFiniteGuard
from train.run.recovery import RollbackLimitError


class Termination(enum.StrEnum):
  COMPLETED = "COMPLETED"
  EARLY_STOP = "EARLY_STOP"
  PREEMPTED = "PREEMPTED"
  NONFINITE = "NONFINITE"
  DISK_FULL = "DISK_FULL"
  CHECKPOINT_FAILED = "CHECKPOINT_FAILED"
  ROLLBACK_LIMIT = "ROLLBACK_LIMIT"  # failures went on after guard.max_rollbacks rollbacks

  @classmethod
  def of_error(cls, err: BaseException) -> Termination | None:
    """The termination a guard failure records; None for errors that are not run guards."""
    for kind, term in ((NonFiniteLossError, cls.NONFINITE), (DiskSpaceError, cls.DISK_FULL),
                       (CheckpointError, cls.CHECKPOINT_FAILED),
                       (RollbackLimitError, cls.ROLLBACK_LIMIT)):
      if isinstance(err, kind):
        return term
    return None


def is_due(step: int, every: int, last: int) -> bool:
  """An every-`every`-steps edge fires at multiples of it and on the run's last step."""
  return step % every == 0 or step == last


class MetricsPipe:
  """Holds the newest step's device metrics until the host can read them without stalling.
  `on_read(step, metrics)` sees every step once, before the guard; a reason it returns (a
  rollback due: train/run/recovery.py) waits in `due` until the loop takes it."""

  def __init__(self, guard: NonFiniteGuard,
               on_read: Callable[[int, dict[str, Any]], str | None] | None = None):
    self.guard, self.on_read = guard, on_read
    self.spikes = 0  # steps the step's spike test skipped, this process's run so far
    self.due: str | None = None
    self._pending: tuple[int, Any] | None = None
    self.losses: list[float] = []  # train losses read since the window last closed
    self.terms: dict[str, list[float]] = {}  # a distilling step's ce and kl, likewise

  def drop(self) -> None:
    """Forget the unread step and the window's losses (a rollback discards those steps)."""
    self._pending, self.due = None, None
    self.losses.clear()
    self.terms.clear()

  def push(self, step: int, metrics: Any) -> None:
    self.read()
    self._pending = (step, metrics)

  def read(self) -> dict[str, Any] | None:
    """Read the pending step's metrics (blocking only on that step) and guard them."""
    if self._pending is None:
      return None
    step, dev = self._pending
    self._pending = None
    m = jax.device_get(dev)
    self.spikes += int(m.get("spike", 0))
    if self.on_read is not None:
      self.due = self.on_read(step, m) or self.due
    self.guard.check(step, float(m["loss"]), float(m["grad_norm"]), int(m["skipped"]),
                     float(m.get("param_norm", 0.0)))
    self.losses.append(float(m["loss"]))
    for k in ("ce", "kl"):
      if k in m:
        self.terms.setdefault(k, []).append(float(m[k]))
    return m


class ThroughputWindow:
  """Steps and wall time since the last log line, minus time paused at the loop's edges."""

  def __init__(self, tokens_per_step: int):
    self.tokens_per_step = tokens_per_step
    self.run_t0 = self._t0 = time.perf_counter()
    self._steps, self._idle = 0, 0.0
    self._paused_at: float | None = None

  def step(self) -> None:
    self._steps += 1

  def pause(self) -> None:
    self._paused_at = time.perf_counter()

  def resume(self) -> None:
    if self._paused_at is not None:
      self._idle += time.perf_counter() - self._paused_at
      self._paused_at = None

  def elapsed(self) -> float:
    return time.perf_counter() - self.run_t0

  def close(self) -> tuple[float, float]:
    """(tokens/s, seconds per step) of the window; starts the next one, paused (the edge
    that closed it is still running)."""
    now = time.perf_counter()
    dt = max(now - self._t0 - self._idle, 1e-9)
    out = self._steps * self.tokens_per_step / dt, dt / max(self._steps, 1)
    self._t0, self._steps, self._idle, self._paused_at = now, 0, 0.0, now
    return out


@dataclasses.dataclass
class EvalTracker:
  """Best val loss, and evaluations without an improvement of more than min_delta."""

  patience: int
  min_delta: float
  best: float | None = None
  bad_evals: int = 0
  val_loss: float | None = None

  def update(self, loss: float) -> None:
    self.val_loss = loss
    if self.best is None or loss < self.best - self.min_delta:
      self.best, self.bad_evals = loss if self.best is None else min(loss, self.best), 0
    else:
      self.bad_evals += 1
      self.best = min(self.best, loss)

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.bad_evals >= self.patience


class Signals:
  """SIGTERM/SIGINT ask the loop to finish the current step, checkpoint and stop.

  Multi-process, the decision must be the same step on every process, so SIGTERM is left to
  JAX's preemption notifier and the loop asks the coordination service (orbax's
  `reached_preemption`) each step; only SIGINT is handled here.
  """

  def __init__(self, checkpointer: Checkpointer):
    self.requested = False
    self._old: dict[int, Any] = {}
    self._multi = jax.process_count() > 1
    self._ckpt = checkpointer

  def __enter__(self) -> Signals:
    for sig in (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def stop_at(self, step: int) -> bool:
    """True on every process at the same step once a preemption was signalled."""
    if self._multi and self._ckpt.manager.reached_preemption(step):
      self.requested = True
    return self.requested

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if not self.requested:
      logging.warning("signal %d: finishing this step, then checkpointing", signum)
    self.requested = True

  def __exit__(self, *_: Any) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)
