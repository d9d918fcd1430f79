"""The watchdog (train/run/watchdog.py) with real threads and real files: it stays quiet while
steps complete, reports a stall once with the stuck thread's stack, re-arms, follows the median
step time above its floor, and on process 0 names the process that went quiet first."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Callable

import pytest

from core.errors import EXIT_HUNG
from train.run.watchdog import Watchdog

FLOOR, FACTOR, POLL = 0.3, 3.0, 0.05
SLACK = 1.5  # seconds of scheduling noise allowed on a shared 2-core machine


def _dog(workdir, exits: list[int] | None = None, **kw) -> Watchdog:
  kw = {"factor": FACTOR, "floor_s": FLOOR, "exit_on_hang": False, "poll_s": POLL, **kw}
  return Watchdog(str(workdir), exit_fn=(exits if exits is not None else []).append, **kw)


def _wait_for(pred: Callable[[], bool], timeout: float) -> bool:
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if pred():
      return True
    time.sleep(0.01)
  return pred()


def _steps(dog: Watchdog, first: int, last: int, step_s: float) -> None:
  for step in range(first, last + 1):
    dog.started(step)
    time.sleep(step_s)
    dog.completed(step)


def _wedged_data_worker_xq7(event: threading.Event) -> None:
  event.wait()


def test_exit_hung_is_its_own_status():
  assert EXIT_HUNG == 76


def test_steps_faster_than_the_bound_never_fire(tmp_path):
  exits: list[int] = []
  with _dog(tmp_path, exits, exit_on_hang=True, floor_s=0.5, factor=2.0) as dog:
    _steps(dog, 1, 75, 0.02)  # 1.5 s of steps: three floors, past the first-step bound (1 s)
  assert dog.fired == [] and exits == []
  beat = json.loads((tmp_path / "heartbeats" / "0.json").read_text())
  assert beat["process"] == 0 and beat["pid"] == os.getpid()
  assert beat["started"] >= 1 and beat["completed"] >= 1 and beat["written"] >= beat["wall"] > 0


@pytest.mark.parametrize("exit_on_hang", [True, False])
def test_a_stall_fires_once_with_the_stuck_stack(tmp_path, caplog, exit_on_hang):
  exits: list[int] = []
  stuck = threading.Event()
  worker = threading.Thread(target=_wedged_data_worker_xq7, args=(stuck,), name="data-worker",
                            daemon=True)
  worker.start()
  try:
    with caplog.at_level(logging.ERROR), _dog(tmp_path, exits, exit_on_hang=exit_on_hang) as dog:
      _steps(dog, 1, 3, 0.01)
      dog.started(4)
      t0 = time.monotonic()
      assert _wait_for(lambda: dog.fired, FLOOR + 2 * POLL + SLACK)
      seen = time.monotonic() - t0
      time.sleep(10 * POLL)  # the same stuck step is not reported again
      assert len(dog.fired) == 1
  finally:
    stuck.set()
  rec = dog.fired[0]
  assert rec["step"] == 4 and rec["quiet_process"] is None
  assert FLOOR <= rec["bound_s"] <= rec["waited_s"] <= seen + POLL
  assert rec["file"] == str(tmp_path / "hangs" / "process0-step4.txt")
  dump = (tmp_path / "hangs" / "process0-step4.txt").read_text()
  assert dump.splitlines()[0] == rec["line"] and "waits in step 4" in rec["line"]
  assert "_wedged_data_worker_xq7" in dump and "data-worker" in dump
  assert "_wedged_data_worker_xq7" in caplog.text and rec["line"] in caplog.text
  assert exits == ([EXIT_HUNG] if exit_on_hang else [])


def test_before_the_first_completed_step_the_bound_is_factor_floors(tmp_path):
  with _dog(tmp_path) as dog:
    dog.started(1)
    assert dog.bound_s() == FACTOR * FLOOR
    assert _wait_for(lambda: dog.fired, FACTOR * FLOOR + SLACK)
  assert dog.fired[0]["waited_s"] >= FACTOR * FLOOR and dog.fired[0]["step"] == 1


def test_it_rearms_after_a_completed_step(tmp_path):
  exits: list[int] = []
  with _dog(tmp_path, exits, exit_on_hang=True) as dog:
    _steps(dog, 1, 3, 0.01)
    dog.started(4)
    assert _wait_for(lambda: len(dog.fired) == 1, FLOOR + SLACK)
    dog.completed(4)
    dog.started(5)
    assert _wait_for(lambda: len(dog.fired) == 2, FLOOR + SLACK)
  assert [r["step"] for r in dog.fired] == [4, 5] and exits == [EXIT_HUNG, EXIT_HUNG]
  assert (tmp_path / "hangs" / "process0-step5.txt").exists()


def test_the_bound_follows_the_median_step_time_but_not_below_the_floor(tmp_path):
  fired = {}
  for name, step_s in [("fast", 0.001), ("slow", 0.25)]:
    with _dog(tmp_path / name) as dog:
      _steps(dog, 1, 3, step_s)  # two intervals: the median counts from here
      dog.started(4)
      assert _wait_for(lambda d=dog: d.fired, FACTOR * 0.25 + SLACK)
    fired[name] = dog.fired[0]
  assert fired["fast"]["bound_s"] == FLOOR  # 3 x 0.001 s is under the floor
  assert FACTOR * 0.25 <= fired["slow"]["bound_s"] <= FACTOR * (0.25 + SLACK / 3)
  assert fired["slow"]["waited_s"] >= FACTOR * 0.25
  assert fired["fast"]["waited_s"] < fired["slow"]["waited_s"]


def test_process_zero_names_the_process_that_went_quiet(tmp_path):
  dogs = [_dog(tmp_path, process_index=i, process_count=3) for i in range(3)]
  for dog in dogs:
    dog.__enter__()
  try:
    for step in range(1, 5):
      for dog in dogs:
        dog.started(step)
      time.sleep(0.02)
      for dog in dogs:
        dog.completed(step)
    dogs[1].started(5)  # process 1 never finishes step 5; the others wait for it in step 6
    time.sleep(0.05)
    for dog in (dogs[0], dogs[2]):
      dog.completed(5)
      dog.started(6)
    assert _wait_for(lambda: all(d.fired for d in dogs), FLOOR + SLACK)
  finally:
    for dog in dogs:
      dog.__exit__(None, None, None)
  rec = dogs[0].fired[0]
  assert rec["quiet_process"] == 1 and rec["step"] == 6
  assert rec["line"].startswith("watchdog: process 1 went quiet: last started step 5, "
                                "last completed step 4,")
  assert rec["line"].endswith("; process 0 waits in step 6")
  assert f"pid {os.getpid()}" in rec["line"]
  assert (tmp_path / "hangs" / "process0-step6.txt").read_text().startswith(rec["line"])
  assert [d.fired[0]["quiet_process"] for d in dogs[1:]] == [None, None]


def test_process_zero_names_a_process_with_no_heartbeat(tmp_path):
  with _dog(tmp_path, process_index=0, process_count=2) as dog:
    dog.started(1)
    assert _wait_for(lambda: dog.fired, FACTOR * FLOOR + SLACK)
  assert dog.fired[0]["quiet_process"] == 1 and "no heartbeat" in dog.fired[0]["line"]


def test_an_unwritable_workdir_still_reports_and_exits(tmp_path, caplog):
  blocker = tmp_path / "not-a-dir"
  blocker.write_text("")
  exits: list[int] = []
  with caplog.at_level(logging.WARNING), _dog(blocker, exits, exit_on_hang=True) as dog:
    _steps(dog, 1, 3, 0.01)
    dog.started(4)
    assert _wait_for(lambda: dog.fired, FLOOR + SLACK)
    time.sleep(5 * POLL)
    thread = dog._thread
  assert dog.fired[0]["file"] is None and exits == [EXIT_HUNG]
  assert "cannot write a heartbeat" in caplog.text and "cannot write the hang report" in caplog.text
  assert caplog.text.count("cannot write a heartbeat") == 1
  assert not thread.is_alive()


def test_exit_stops_the_thread_quickly(tmp_path):
  dog = _dog(tmp_path, poll_s=30.0)
  with dog:
    assert dog._thread.is_alive() and dog._thread.daemon
    t0 = time.monotonic()
  assert not dog._thread.is_alive() and time.monotonic() - t0 < 1.0


def test_the_default_poll_is_a_tenth_of_the_floor_within_limits(tmp_path):
  poll = lambda floor: Watchdog(str(tmp_path), factor=2, floor_s=floor, exit_on_hang=False).poll_s
  assert (poll(0.1), poll(3.0), poll(600.0)) == (0.05, 0.3, 5.0)
