"""Rollback and replay past bad data (guard.rollback_*), exact and auditable.

The step skips a single spike by itself (train/state/spikes.py). When skips persist
(`rollback_skips` of them within `rollback_window` steps) or a step goes non-finite, the host
rolls the run back: it restores the newest checkpoint saved before the first suspicious step
(validated like any restore), replays the steps up to it with the same batches (batch i is a
pure function of (seed, i), so the replay is bitwise the original), and re-runs the suspicious
step once from that same state (Megatron-LM's rerun). The same loss again means the data is bad:
the batches from the first suspicious step to the rollback's are skipped from then on (the
iterator's skip windows, kept in its checkpointed state and in every later checkpoint's
metadata). A different loss means the machine is not deterministic: a suspected hardware fault,
recorded as such, and the same batches are trained again. After `max_rollbacks` the run stops
(exit 4) with one line naming what happened.

Each rollback is written to WORKDIR/recovery.json before anything is changed (`pending`), and
the checkpoints after its target are set aside (`<step>.rolled-back-<n>`) before the restore, so
a process killed mid-recovery resumes into the same recovery and ends in the same state.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from core.errors import RunGuardError
from core.jsonio import write_json_atomic

FILE = "recovery.json"


class RollbackLimitError(RunGuardError):
  """The run kept failing after max_rollbacks rollbacks (exit 4; checkpoints intact)."""


@dataclasses.dataclass
class Seen:
  step: int
  batch: int  # the batch index the step trained on
  loss: float
  spike: bool


@dataclasses.dataclass
class Replay:
  """What a rollback drives: restore a checkpoint step (state, with the iterator's position),
  the compiled step that produces a step, the next global batch, and a state copy."""
  restore: Callable[[int], Any]
  step_fn: Callable[[int], Any]
  next_batch: Callable[[int], Any]  # the global batch step `step` trains on
  copy: Callable[[Any], Any]


class Recovery:
  """Watches every step's loss and spike flag; plans and carries out rollbacks."""

  def __init__(self, guard: Any, workdir: str, is_main: bool):
    self.guard, self.is_main = guard, is_main
    self.path = os.path.join(workdir, FILE)
    record = read(workdir)
    self.rollbacks: list[dict[str, Any]] = record.get("rollbacks", [])
    self.pending: dict[str, Any] | None = record.get("pending")
    self.seen: collections.deque[Seen] = collections.deque(maxlen=max(guard.rollback_window, 1))

  @property
  def enabled(self) -> bool:
    return self.guard.max_rollbacks > 0

  def observe(self, step: int, batch: int, loss: float, spike: bool) -> str | None:
    """Record a step; the reason a rollback is due now, or None."""
    self.seen.append(Seen(step, batch, loss, spike))
    skips = sum(s.spike for s in self.seen)
    if self.enabled and self.guard.rollback_skips and skips >= self.guard.rollback_skips:
      return (f"{skips} loss spikes skipped within {self.guard.rollback_window} steps "
              f"(guard.rollback_skips={self.guard.rollback_skips})")
    return None

  def plan(self, step: int, reason: str, checkpoints: list[int]) -> dict[str, Any]:
    """The rollback for a failure noticed at `step`: from its first suspicious step (the first
    spike in view, else this step) to the newest checkpoint before it."""
    if len(self.rollbacks) >= self.guard.max_rollbacks:
      raise RollbackLimitError(
          f"step {step}: {reason}, after {len(self.rollbacks)} rollback(s) "
          f"(guard.max_rollbacks={self.guard.max_rollbacks}); the run keeps failing: "
          f"{describe(self.rollbacks)}. The checkpoints are intact; inspect the data around "
          f"the skipped batches, lower optimizer.lr, or raise guard.max_rollbacks")
    bad = next((s for s in self.seen if s.spike), self.seen[-1])
    earlier = [c for c in checkpoints if c < bad.step]
    if not earlier:
      raise RollbackLimitError(
          f"step {step}: {reason}, but no checkpoint was saved before step {bad.step} to roll "
          f"back to; lower checkpoint.save_every, or guard.rollback_skips=0 to only skip")
    last = max(self.seen[-1].batch, bad.batch + self.guard.rollback_skip_batches - 1)
    pending = {"at_step": step, "to_step": earlier[-1], "first_step": bad.step,
               "recorded_loss": bad.loss, "batches": [bad.batch, last],
               "reason": reason}
    self.pending = pending
    self._write()
    return pending

  def execute(self, pending: dict[str, Any], replay: Replay, restored: Any = None
              ) -> tuple[Any, int, dict[str, Any]]:
    """Restore (unless `restored` is the target's state), replay, re-run the first suspicious
    step; -> (the state to continue from, its step, the record). Bad data: the state before
    the first suspicious step, whose batches the caller then skips (`skipped_batches`).
    Non-determinism: the re-run's state, after that step."""
    state = replay.restore(pending["to_step"]) if restored is None else restored
    for step in range(pending["to_step"] + 1, pending["first_step"]):
      state, _ = replay.step_fn(step)(state, replay.next_batch(step))
    before = replay.copy(state)
    first = pending["first_step"]
    after, metrics = replay.step_fn(first)(state, replay.next_batch(first))
    rerun = float(jax.device_get(metrics["loss"]))
    same = np.float32(rerun) == np.float32(pending["recorded_loss"])
    record = {**pending, "rerun_loss": rerun,
              "verdict": "bad data" if same else "non-deterministic (suspected hardware fault)",
              "skipped_batches": pending["batches"] if same else None}
    self.rollbacks.append(record)
    self.pending = None
    self.seen.clear()
    self._write()
    logging.warning("rollback %d: %s at step %d; restored step %d, replayed to step %d; the "
                    "re-run of step %d gave loss %.6f (recorded %.6f): %s%s",
                    len(self.rollbacks), pending["reason"], pending["at_step"],
                    pending["to_step"], pending["first_step"] - 1, pending["first_step"],
                    rerun, pending["recorded_loss"], record["verdict"],
                    f"; batches {pending['batches'][0]}..{pending['batches'][1]} skipped"
                    if same else "")
    if same:
      return before, pending["first_step"] - 1, record
    return after, pending["first_step"], record

  def _write(self) -> None:
    if self.is_main:
      write_json_atomic(self.path, {"rollbacks": self.rollbacks, "pending": self.pending})


def set_aside_after(checkpointer: Any, step: int) -> None:
  """Rename the checkpoints after a rollback's target aside (`<step>.rolled-back-<n>`, process
  0), then wait for every process, so none restores from a step that is being moved."""
  later = [c for c in checkpointer.steps() if c > step]
  if later and jax.process_index() == 0:
    checkpointer.set_aside(later, "rolled-back")
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("pregate:rolled_back")


def read(workdir: str) -> dict[str, Any]:
  """A workdir's recovery record ({} if none)."""
  try:
    with open(os.path.join(workdir, FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}
  except (OSError, ValueError) as e:
    raise RunGuardError(f"{os.path.join(workdir, FILE)} is unreadable ({e}); it records "
                        f"the run's rollbacks: restore it, or move it aside to forget them"
                        ) from None


def skipped_windows(rollbacks: list[dict[str, Any]]) -> list[tuple[int, int]]:
  return [tuple(r["skipped_batches"]) for r in rollbacks if r.get("skipped_batches")]


def describe(rollbacks: list[dict[str, Any]]) -> str:
  """One line of every rollback so far."""
  return "; ".join(
      f"at step {r['at_step']} to step {r['to_step']} ({r['verdict']}"
      + (f", batches {r['skipped_batches'][0]}..{r['skipped_batches'][1]} skipped"
         if r.get("skipped_batches") else "") + ")" for r in rollbacks) or "none"
