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
  for sigs in ([signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]):
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


def _finite_checkpoints(workdir):
  """Every saved checkpoint holds finite params and records a finite val loss."""
  steps = helpers.checkpoint_steps(workdir)
  for step in steps:
    assert np.isfinite(helpers.checkpoint_meta(workdir, step)["val_loss"]), step
    for path, leaf in helpers.flat(helpers.load_params(workdir, step)).items():
      assert np.isfinite(leaf).all(), f"checkpoint {step}: {path} is not finite"
  return steps


@pytest.mark.slow
@pytest.mark.parametrize("skip", [0, 1])
def test_divergence_stops_before_saving_poison(flags, tmp_path, skip):
  """lr 3e3 with weight decay multiplies the weights by ~-300 a step: the forward pass
  overflows at step 8. skip=0 stops there; skip=1 skips one update and stops at the second."""
  workdir = tmp_path / "run"
  res = helpers.run_main(*flags, "--config.optimizer.lr=3e3", "--config.optimizer.grad_clip=0",
                         f"--config.optimizer.skip_nonfinite={skip}", workdir=workdir)
  assert res.rc == 4, res.stderr[-3000:]
  errors = [x for x in res.error_lines if x.startswith("ERROR:")]
  assert len(errors) == 1 and errors[0].startswith("ERROR: NonFiniteLossError: "), errors
  _assert_no_pregate_traceback(res.stderr)
  records = helpers.read_jsonl(workdir / "metrics.jsonl")
  end = _end(records)
  assert end["termination"] == "NONFINITE" and f"step {end['step']}" in errors[0], end
  trained = helpers.events(records, "train")
  bad = [r["step"] for r in trained if not np.isfinite(r["loss"])]
  if skip:  # one update skipped (logged as a NaN loss), stopped once past the limit
    assert len(bad) == skip and end["step"] > bad[0] and "skipped" in errors[0], (bad, end)
  else:
    assert not bad and end["step"] == trained[-1]["step"] + 1
  assert 5 in _finite_checkpoints(workdir)
  assert max(helpers.checkpoint_steps(workdir)) < end["step"]


def test_skipped_updates_leave_params_unchanged_and_finite(prepared_data):
  """In-process: the diverging config's steps, with skipping on. A skipped step is a no-op."""
  import jax
  from models.config import ModelConfig
  from train import data as data_lib
  from train import step as step_lib
  cfg = helpers.tiny_config(prepared_data, {"optimizer.lr": 3e3, "optimizer.grad_clip": 0,
                                            "optimizer.skip_nonfinite": 1})
  tx = step_lib.make_optimizer(cfg)
  graphdef, init = step_lib.init_fn(ModelConfig.from_dict(cfg.model.to_dict()), tx, cfg.seed)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, step_lib.lr_schedule(cfg),
                                          skip_nonfinite=True))
  it = data_lib.make_train_iter(data_lib.open_split(prepared_data, "train"), global_batch=4,
                                seq_len=32, seed=0, num_batches=12, process_index=0,
                                process_count=1)
  state, skipped = jax.jit(init)(), 0
  for _ in range(10):
    before = helpers.flat(jax.device_get(state.params))
    state, m = step(state, next(it))
    if int(m["skipped"]):
      skipped += 1
      after = helpers.flat(jax.device_get(state.params))
      assert all(np.array_equal(after[k], v) and np.isfinite(v).all() for k, v in before.items())
  assert skipped  # the config does diverge, so the skipping path ran


def _assert_no_pregate_traceback(stderr):
  """orbax/tensorstore threads may print their own tracebacks; none may come from ours."""
  frames = [x for x in stderr.splitlines() if x.strip().startswith("File \"")
            and str(helpers.REPO) in x and "site-packages" not in x]
  assert not frames, frames


def _damage(workdir, step, how):
  d = workdir / "checkpoints" / str(step)
  arrays = sorted((d / "params" / "ocdbt.process_0" / "d").iterdir())
  assert arrays
  for f in arrays:
    if how == "truncate":
      os.truncate(f, f.stat().st_size // 2)
    elif how == "delete":
      f.unlink()
  if how == "metadata":
    (d / "meta" / "metadata").write_text('{"schema": "pregate.chec')


@pytest.mark.slow
def test_damaged_checkpoints_are_skipped(flags, whole, tmp_path):
  """Truncated arrays (20), deleted arrays (15), torn metadata (10) and a leftover incomplete
  save: resume warns about each, sets them aside, restarts from 5 and ends as if intact."""
  workdir = tmp_path / "run"
  shutil.copytree(whole, workdir)
  ckpts = workdir / "checkpoints"
  for step, how in ((20, "truncate"), (15, "delete"), (10, "metadata")):
    _damage(workdir, step, how)
  shutil.copytree(ckpts / "5", ckpts / "15.orbax-checkpoint-tmp")
  (ckpts / "15.orbax-checkpoint-tmp" / "commit_success.txt").unlink()
  n = len(helpers.read_jsonl(workdir / "metrics.jsonl"))
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  warnings = [x for x in res.error_lines if " is damaged, skipped" in x]
  assert [x.split(" is damaged")[0].rsplit("/", 1)[1] for x in warnings] == ["20", "15", "10"]
  _assert_no_pregate_traceback(res.stderr)
  assert {p.name for p in ckpts.iterdir() if ".damaged-" in p.name} == \
      {"20.damaged-0", "15.damaged-0", "10.damaged-0"}
  assert helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl")[n:], "train")[0][
      "step"] == 6
  _assert_same_params(workdir, whole)


@pytest.mark.slow
def test_no_intact_checkpoint_refuses(flags, whole, tmp_path):
  """Every checkpoint damaged: refuse (exit 2) rather than train from scratch over them;
  --init from a damaged one is one line too, and train.inspect flags torn metadata."""
  workdir = tmp_path / "run"
  shutil.copytree(whole, workdir)
  for step in (5, 10, 15, 20):
    _damage(workdir, step, "truncate")
  _damage(workdir, 20, "metadata")
  before = helpers.snapshot(workdir / "checkpoints")
  trained = helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "train")
  for target, init, needle in ((workdir, "", "no usable checkpoint"),
                               (tmp_path / "fresh", f"--init={workdir}:15", "damaged")):
    res = helpers.run_main(*flags, *([init] if init else []), workdir=target)
    errors = [x for x in res.error_lines if x.startswith("ERROR:")]
    assert res.rc == 2 and len(errors) == 1 and needle in errors[0], res.stderr[-3000:]
    assert errors[0].startswith("ERROR: CheckpointError: ")
    _assert_no_pregate_traceback(res.stderr)
  assert helpers.snapshot(workdir / "checkpoints") == before
  assert helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "train") == trained
  if not (helpers.REPO / "train" / "inspect.py").exists():
    pytest.skip("train.inspect is not there")
  res = subprocess.run([sys.executable, "-m", "train.inspect", str(workdir), "--step=20"],
                       cwd=helpers.REPO, env=helpers.child_env(), capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 2 and res.stderr.startswith("ERROR: ") and "20" in res.stderr, \
      res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("change", ["--config.model.d_ff=48", "--config.data.val_fraction=0.2"])
def test_other_experiment_in_workdir_refused(flags, whole, change):
  before = helpers.snapshot(whole)
  res = helpers.run_main(*flags, change, workdir=whole)
  field = change.split("--config.")[1].split("=")[0]
  assert res.rc == 2 and len(res.error_lines) == 1, res.stderr[-3000:]
  assert "belongs to a different experiment" in res.error_lines[0]
  assert f"{field}: " in res.error_lines[0] and "Traceback" not in res.stderr
  assert helpers.snapshot(whole) == before


@pytest.mark.slow
def test_config_changes_safe_allowed_schedule_opt_in(flags, whole, tmp_path):
  """eval_every is safe (allowed, logged, recorded in run.json); train_steps changes the
  schedule: refused untouched without --allow_config_change, and recorded in the next
  checkpoint's metadata with it."""
  safe, longer = tmp_path / "safe", tmp_path / "longer"
  shutil.copytree(whole, safe)
  shutil.copytree(whole, longer)
  res = helpers.run_main(*flags, "--config.eval.eval_every=5", workdir=safe)
  assert res.rc == 0, res.stderr[-3000:]
  assert "eval.eval_every: 10 -> 5" in res.stderr
  owner = json.loads((safe / "run.json").read_text())
  assert owner["changes"][-1]["safe"] == ["eval.eval_every: 10 -> 5"]

  before = helpers.snapshot(longer)
  res = helpers.run_main(*flags, "--config.train_steps=25", workdir=longer)
  assert res.rc == 2 and len(res.error_lines) == 1, res.stderr[-3000:]
  assert "train_steps: 20 -> 25" in res.error_lines[0] and "--allow_config_change" in \
      res.error_lines[0]
  assert helpers.snapshot(longer) == before
  res = helpers.run_main(*flags, "--config.train_steps=25", "--allow_config_change",
                         workdir=longer)
  assert res.rc == 0, res.stderr[-3000:]
  assert helpers.checkpoint_steps(longer)[-1] == 25
  assert "train_steps: 20 -> 25" in helpers.checkpoint_meta(longer, 25)["config_changes"]


def test_check_disk_refuses_what_does_not_fit(monkeypatch, tmp_path):
  from train import guards
  usage = lambda free: lambda path: shutil._ntuple_diskusage(10 * 2**30, 0, free)
  monkeypatch.setattr(guards.shutil, "disk_usage", usage(2**20))
  with pytest.raises(guards.DiskSpaceError, match="free disk space") as err:
    guards.check_disk(str(tmp_path), 2**20)  # needs 1 MiB + 20% margin
  assert err.value.exit_code == 4 and "\n" not in str(err.value)
  monkeypatch.setattr(guards.shutil, "disk_usage", usage(2 * 2**20))
  guards.check_disk(str(tmp_path), 2**20)


@pytest.mark.slow
@pytest.mark.parametrize("env", [{"PREGATE_TEST_ENOSPC_AT": "10"},
                                 {"PREGATE_TEST_DISK_FULL": "1"}], ids=["enospc", "disk-full"])
def test_full_disk_stops_with_one_line_and_keeps_checkpoints(flags, tmp_path, env):
  """The second save fails: ENOSPC from the write itself, or the free-space check before it.
  One typed line, exit 4, DISK_FULL recorded, and the first checkpoint intact."""
  workdir = tmp_path / "run"
  rc, out = _finish(_launch(workdir, flags, env=env))
  errors = [x for x in out.splitlines() if x.startswith("ERROR:")]
  assert rc == 4 and len(errors) == 1, out[-3000:]
  assert errors[0].startswith("ERROR: DiskSpaceError: ") and "Traceback" not in out
  end = _end(helpers.read_jsonl(workdir / "metrics.jsonl"))
  assert (end["termination"], end["step"]) == ("DISK_FULL", 10), end
  assert _finite_checkpoints(workdir) == [5] and not _tmp_dirs(workdir)
