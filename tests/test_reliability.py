"""Reliability under real failures: SIGKILL anywhere, SIGTERM/SIGINT preemption, divergence,
damaged checkpoints, a foreign workdir, a full disk. Each ends in a state that re-running the
same command recovers from bit for bit, or in a one-line refusal that leaves the files as they
were. Runs are real subprocesses sent real signals; the ends are compared with a run that was
never interrupted."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import helpers

STEPS = 20
RUN = {"train_steps": STEPS, "checkpoint.save_every": 5, "checkpoint.keep": 4,
       "logging.log_every": 1}
DELAY = {"PREGATE_TEST_DELAY": "0.05"}  # ~1 s of steps: room to land a signal mid-run

# The real command with test hooks patched in first: a per-step delay, and disk failures no
# unprivileged test can cause for real (ENOSPC from a save; a disk that fills after one save).
_CHILD = """
import errno, os, shutil, sys, time, types
from train import checkpoint, guards, metrics_log
env = os.environ.get
if env("PREGATE_TEST_DELAY"):
  _write = metrics_log.MetricsLog.write
  def write(self, record):
    _write(self, record)
    if record.get("event") == "train":
      time.sleep(float(env("PREGATE_TEST_DELAY")))
  metrics_log.MetricsLog.write = write
if env("PREGATE_TEST_ENOSPC_AT"):
  _save = checkpoint.Checkpointer.save
  def save(self, step, *a, **k):
    if step >= int(env("PREGATE_TEST_ENOSPC_AT")):
      raise OSError(errno.ENOSPC, "No space left on device", self.directory)
    return _save(self, step, *a, **k)
  checkpoint.Checkpointer.save = save
if env("PREGATE_TEST_DISK_FULL"):
  calls = []
  def disk_usage(path):
    calls.append(path)
    real = shutil.disk_usage(path)
    return real if len(calls) == 1 else types.SimpleNamespace(total=real.total, used=real.total, free=0)
  guards.shutil = types.SimpleNamespace(disk_usage=disk_usage)
sys.argv = ["train.main"] + sys.argv[1:]
from train import main
main.run()
"""


@pytest.fixture(scope="module")
def flags(prepared_data):
  return [*helpers.tiny_flags(prepared_data, RUN), helpers.FORCE]


@pytest.fixture(scope="module")
def whole(flags, tmp_path_factory):
  """The reference: the same command, never interrupted."""
  workdir = tmp_path_factory.mktemp("whole") / "run"
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  assert helpers.checkpoint_steps(workdir) == [5, 10, 15, 20]
  return workdir


def _launch(workdir, flags, *extra, env=None):
  log = workdir.parent / f"{workdir.name}.{time.monotonic_ns()}.log"
  cmd = [sys.executable, "-c", _CHILD, f"--config={helpers.CONFIG}", f"--workdir={workdir}",
         *flags, *extra]
  with open(log, "w") as out:
    proc = subprocess.Popen(cmd, cwd=helpers.REPO, env={**helpers.child_env(), **(env or {})},
                            stdout=out, stderr=subprocess.STDOUT)
  proc.log = log
  return proc


def _lines(workdir):
  """Complete records of metrics.jsonl (the child may be writing the last one)."""
  path = workdir / "metrics.jsonl"
  text = path.read_text() if path.exists() else ""
  return [json.loads(x) for x in text.split("\n")[:-1] if x.strip()]


def _wait_for(proc, cond, what, timeout=180):
  end = time.monotonic() + timeout
  while not cond():
    assert proc.poll() is None, f"exited {proc.returncode} before {what}:\n" + \
        proc.log.read_text()[-3000:]
    if time.monotonic() > end:
      proc.kill()
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.001)


def _trained_to(workdir, n_before, step):
  return lambda: any(r.get("event") == "train" and r["step"] >= step
                     for r in _lines(workdir)[n_before:])


def _tmp_dirs(workdir):
  d = workdir / "checkpoints"
  return sorted(p.name for p in d.iterdir() if ".orbax-checkpoint-tmp" in p.name) \
      if d.exists() else []


def _finish(proc, timeout=180):
  proc.wait(timeout)
  return proc.returncode, proc.log.read_text()


def _assert_same_params(workdir, reference, step=STEPS):
  got, want = (helpers.flat(helpers.load_params(w, step)) for w in (workdir, reference))
  assert got.keys() == want.keys() and want
  for path in want:
    assert np.array_equal(got[path], want[path]), f"{path} differs from the uninterrupted run"


def _assert_same_trajectory(workdir, reference):
  """Every segment (one per process, starting with its 'gate' record) resumed right after the
  checkpoint it restored, and every step's train loss equals the uninterrupted run's."""
  want = {r["step"]: r["loss"] for r in helpers.events(helpers.read_jsonl(
      reference / "metrics.jsonl"), "train")}
  records = helpers.read_jsonl(workdir / "metrics.jsonl")
  trained = helpers.events(records, "train")
  assert trained and all(r["loss"] == want[r["step"]] for r in trained), \
      [(r["step"], r["loss"], want[r["step"]]) for r in trained if r["loss"] != want[r["step"]]]
  assert max(r["step"] for r in trained) == STEPS
  return records


@pytest.mark.slow
def test_sigkill_anywhere_then_rerun_is_bitwise_identical(flags, whole, tmp_path):
  workdir, starts = tmp_path / "run", []

  def kill_when(cond, what):
    starts.append(helpers.checkpoint_steps(workdir)[-1] if helpers.checkpoint_steps(workdir)
                  else 0)
    proc = _launch(workdir, flags, env=DELAY)
    _wait_for(proc, cond(len(_lines(workdir))), what)
    os.kill(proc.pid, signal.SIGKILL)
    assert _finish(proc)[0] == -signal.SIGKILL

  kill_when(lambda n: (workdir / "checkpoints" / "5").is_dir, "the first committed save")
  kill_when(lambda n: lambda: _trained_to(workdir, n, starts[-1] + 7)() and not _tmp_dirs(
      workdir) and starts[-1] + 5 in helpers.checkpoint_steps(workdir), "a step between saves")
  for _ in range(3):  # Until a kill lands while an async save is still being written.
    kill_when(lambda n: lambda: bool(_tmp_dirs(workdir)), "an async save in flight")
    if _tmp_dirs(workdir):
      break
  else:
    pytest.fail("no kill landed during an async checkpoint write")
  [torn] = [int(t.split(".")[0]) for t in _tmp_dirs(workdir)]
  assert torn not in helpers.checkpoint_steps(workdir)  # the torn save is not a checkpoint

  starts.append(helpers.checkpoint_steps(workdir)[-1])
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  assert torn in helpers.checkpoint_steps(workdir)  # saved again over the leftover tmp dir
  records = _assert_same_trajectory(workdir, whole)
  gates = [i for i, r in enumerate(records) if r["event"] == "gate"]
  firsts = [next(r["step"] for r in records[i:] if r["event"] == "train") for i in gates]
  assert firsts == [s + 1 for s in starts], (firsts, starts)
  assert records[-1]["event"] == "end" and records[-1]["termination"] == "COMPLETED"
  _assert_same_params(workdir, whole)


def _end(records):
  ends = helpers.events(records, "end")
  assert ends, "no 'end' record"
  return ends[-1]


@pytest.mark.slow
def test_sigterm_and_sigint_preempt_cleanly(flags, whole, tmp_path):
  """Each signal finishes the step, saves it and exits 75; a second SIGTERM while that save
  is being written changes nothing. Re-running then completes exactly as if never stopped."""
  workdir, reached = tmp_path / "run", 0
  for sigs in ([signal.SIGTERM], [signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]):
    n = len(_lines(workdir))
    proc = _launch(workdir, flags, env=DELAY)
    _wait_for(proc, _trained_to(workdir, n, reached + 3), "training")
    os.kill(proc.pid, sigs[0])
    if len(sigs) > 1:
      _wait_for(proc, lambda: any(int(t.split(".")[0]) > reached for t in _tmp_dirs(workdir)),
                "the preemption save")
      os.kill(proc.pid, sigs[1])
    rc, out = _finish(proc)
    assert rc == 75, out[-3000:]
    assert "Traceback" not in out
    end = _end(_lines(workdir)[n:])
    assert end["termination"] == "PREEMPTED" and reached < end["step"] < STEPS, end
    reached = end["step"]
    assert helpers.checkpoint_steps(workdir)[-1] == reached and not _tmp_dirs(workdir)
    meta = helpers.checkpoint_meta(workdir, reached)
    assert (meta["step"], meta["termination"]) == (reached, "PREEMPTED")
    assert all(np.isfinite(v).all() for v in helpers.flat(helpers.load_params(
        workdir, reached)).values())  # the checkpoint restores
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  _assert_same_trajectory(workdir, whole)
  _assert_same_params(workdir, whole)
