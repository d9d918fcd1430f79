"""A watchdog thread that notices when no training step completes in time, and names who hung.

A stuck collective or a wedged data worker leaves a multi-host job silent until the scheduler's
wall clock runs out. The watchdog reports within a bound instead: every thread's stack, the step
it waits in and (process 0, from every process's heartbeat file) the process that went quiet
first; with exit_on_hang it then ends the process with EXIT_HUNG so the job can be re-run.
Stdlib and absl only (no jax): importing it stays cheap and it never needs the hung thread.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable

from absl import logging

from core.errors import EXIT_HUNG
from core.jsonio import write_json_atomic

WINDOW = 50  # recent intervals between completed steps that the median is taken over


class Watchdog:
  """Reports once per hang when no `completed` call comes within the bound, then (exit_on_hang)
  calls exit_fn(EXIT_HUNG); the next `completed` re-arms it.

  The bound is max(factor * median of the last WINDOW intervals between `completed` calls,
  floor_s). The clock starts at __enter__ (after compile and start-up); until the first
  `completed` the bound is max(factor * floor_s, floor_s), as the first step may do work later
  ones skip; then floor_s until two intervals exist. Intervals are between calls: metrics read
  every k steps give a bound of k steps, and a slow edge (eval, save) must fit under floor_s.

  `started`/`completed` only record a step and a time under a lock (no I/O on the loop's
  thread); the daemon thread writes WORKDIR/heartbeats/<process_index>.json every poll_s and
  WORKDIR/hangs/process<i>-step<k>.txt on a hang. Nothing raises out of the thread.
  """

  def __init__(self, workdir: str, *, factor: float, floor_s: float, exit_on_hang: bool,
               process_index: int = 0, process_count: int = 1, poll_s: float | None = None,
               exit_fn: Callable[[int], None] = os._exit):
    if factor <= 0 or floor_s <= 0:
      raise ValueError(f"watchdog factor and floor_s must be > 0, got {factor}, {floor_s}")
    self.workdir, self.factor, self.floor_s = workdir, factor, floor_s
    self.exit_on_hang, self.exit_fn = exit_on_hang, exit_fn
    self.process_index, self.process_count = process_index, process_count
    self.poll_s = poll_s if poll_s is not None else min(max(floor_s / 10, 0.05), 5.0)
    self.fired: list[dict[str, Any]] = []
    self._lock = threading.Lock()
    self._intervals: collections.deque[float] = collections.deque(maxlen=WINDOW)
    self._started: int | None = None
    self._completed: int | None = None
    self._done = 0  # completed calls so far: a hang is reported once per value (the re-arm)
    self._last_done: float | None = None  # monotonic time of the last completed call
    self._since, self._wall = time.monotonic(), time.time()  # the clock: enter or completed
    self._fired_at, self._beat_failed = -1, False
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="pregate-watchdog", daemon=True)

  def __enter__(self) -> Watchdog:
    with self._lock:
      self._since, self._wall = time.monotonic(), time.time()
    self._thread.start()
    return self

  def __exit__(self, *_: Any) -> None:
    with contextlib.suppress(Exception):
      self._stop.set()
      self._thread.join(timeout=1.0)

  def started(self, step: int) -> None:
    """The loop is about to dispatch `step`."""
    with self._lock:
      self._started = step

  def completed(self, step: int) -> None:
    """`step`'s metrics were read: it finished. Restarts the clock and re-arms the report."""
    now, wall = time.monotonic(), time.time()
    with self._lock:
      if self._last_done is not None:
        self._intervals.append(now - self._last_done)
      self._completed, self._done, self._last_done = step, self._done + 1, now
      self._since, self._wall = now, wall

  def bound_s(self) -> float:
    """Seconds without a completed step after which the watchdog reports a hang."""
    with self._lock:
      done, intervals = self._done, list(self._intervals)
    if done == 0:
      return max(self.factor * self.floor_s, self.floor_s)
    if len(intervals) < 2:
      return self.floor_s
    return max(self.factor * statistics.median(intervals), self.floor_s)

  def _run(self) -> None:
    while True:
      try:
        self._beat()
        self._check()
      except Exception as e:  # the thread must never die with a traceback nor stop the run
        logging.warning("watchdog: %s: %s", type(e).__name__, e)
      if self._stop.wait(self.poll_s):
        return

  def _snapshot(self) -> tuple[int | None, int | None, float, float, int]:
    with self._lock:
      return self._started, self._completed, self._since, self._wall, self._done

  def _beat(self) -> None:
    """This process's heartbeat, for process 0 to compare when a hang is reported."""
    started, completed, _, wall, _ = self._snapshot()
    directory = os.path.join(self.workdir, "heartbeats")
    try:
      os.makedirs(directory, exist_ok=True)
      write_json_atomic(os.path.join(directory, f"{self.process_index}.json"), {
          "process": self.process_index, "pid": os.getpid(), "host": socket.gethostname(),
          "started": started, "completed": completed, "wall": wall, "written": time.time()})
    except OSError as e:
      if not self._beat_failed:  # once: an unwritable workdir would warn every poll
        logging.warning("watchdog: cannot write a heartbeat under %s: %s", directory, e)
      self._beat_failed = True

  def _check(self) -> None:
    started, completed, since, _, done = self._snapshot()
    bound, waited = self.bound_s(), time.monotonic() - since
    if waited <= bound or self._fired_at == done:
      return
    self._fired_at = done
    try:
      self._report(started, completed, waited, bound)
    finally:
      if self.exit_on_hang:
        logging.flush()
        self.exit_fn(EXIT_HUNG)

  def _report(self, started: int | None, completed: int | None, waited: float,
              bound: float) -> None:
    """The hang report: the quiet process's line (process 0), a header, then every stack."""
    i = self.process_index
    if started is not None and (completed is None or started > completed):
      step = started
    else:
      step = 0 if completed is None else completed + 1
    header = (f"watchdog: no step completed for {waited:.1f} s (bound {bound:.1f} s): process "
              f"{i} waits in step {step} (last started {started}, last completed {completed})")
    quiet, line = None, header
    if i == 0 and self.process_count > 1:
      try:
        self._beat()  # this process's own heartbeat, fresh, before comparing
        quiet, line = self._name_quiet(step)
      except Exception as e:
        logging.warning("watchdog: cannot read the heartbeats: %s: %s", type(e).__name__, e)
    text = "\n".join([line] + ([header] if line != header else []) + [_stacks()])
    logging.error("%s", text)
    path: str | None = os.path.join(self.workdir, "hangs", f"process{i}-step{step}.txt")
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      _write_text_atomic(path, text)
    except OSError as e:
      logging.warning("watchdog: cannot write the hang report %s: %s", path, e)
      path = None
    self.fired.append({"step": step, "waited_s": waited, "bound_s": bound,
                       "quiet_process": quiet, "line": line, "file": path})

  def _name_quiet(self, step: int) -> tuple[int, str]:
    """The process with the smallest started step (ties: the oldest wall), from the heartbeat
    files; a process with no heartbeat file at all is named first."""
    directory = os.path.join(self.workdir, "heartbeats")
    beats = []  # an unreadable or non-JSON file is skipped; one missing a key fails the line
    for name in sorted(os.listdir(directory)):
      if name.endswith(".json"):
        with contextlib.suppress(OSError, ValueError), open(os.path.join(directory, name)) as f:
          beats.append(json.load(f))
    tail = f"process {self.process_index} waits in step {step}"
    missing = sorted(set(range(self.process_count)) - {b["process"] for b in beats})
    if missing:
      return missing[0], (f"watchdog: process {missing[0]} went quiet: no heartbeat in "
                          f"{directory}; {tail}")
    key = lambda b: (-1 if b["started"] is None else b["started"], b["wall"])
    b = min(beats, key=key)
    return int(b["process"]), (
        f"watchdog: process {b['process']} went quiet: last started step {b['started']}, "
        f"last completed step {b['completed']}, {time.time() - b['wall']:.1f} s ago "
        f"(host {b['host']}, pid {b['pid']}); {tail}")


def _stacks() -> str:
  """Every thread's stack, named: the stuck one shows where the loop (or a worker) waits."""
  threads = {t.ident: t for t in threading.enumerate()}
  parts = []
  for ident, frame in sys._current_frames().items():
    t = threads.get(ident)
    name = f"{t.name}{' (daemon)' if t.daemon else ''}" if t else "?"
    parts.append(f"--- thread {name} [{ident}] ---\n" + "".join(traceback.format_stack(frame)))
  return "\n".join(parts)


def _write_text_atomic(path: str, text: str) -> None:
  """Readers (a person, a log collector) see the whole report or none of it."""
  fd, tmp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.tmp-", dir=os.path.dirname(path))
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
