"""Real failures (SIGKILL, SIGTERM/SIGINT, divergence, damaged checkpoints, a foreign workdir, a
full disk) end where re-running the command recovers bit for bit, or in a one-line refusal."""
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

import helpers

pytestmark = pytest.mark.e2e


STEPS = 20
RUN = {"train_steps": STEPS, "checkpoint.save_every": 5, "checkpoint.keep": 4,
       "logging.log_every": 1}
DELAY = {"PREGATE_TEST_DELAY": "0.05"}  # ~1 s of steps: room to land a signal mid-run


@pytest.fixture(scope="module")
def flags(prepared_data):
  return [*helpers.tiny_flags(prepared_data, RUN), helpers.FORCE]


@pytest.fixture(scope="module")
def whole(flags, tmp_path_factory):  # the reference: the same command, never interrupted
  workdir = tmp_path_factory.mktemp("whole") / "run"
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0 and helpers.checkpoint_steps(workdir) == [5, 10, 15, 20], res.stderr
  return workdir


def _run(workdir, flags, *sigs, when=None, env=None):
  """The command (with faulty_main.py's seams) in the background. The first signal goes once
  when(n) holds (n: records before launch), any later one once a save is being written."""
  n, log = len(_lines(workdir)), workdir.parent / f"{workdir.name}.{time.monotonic_ns()}.log"
  proc = helpers.spawn([str(helpers.CHILDREN / "faulty_main.py"), f"--config={helpers.CONFIG}",
                        f"--workdir={workdir}", *flags], log, env=env)
  for i, sig in enumerate(sigs):
    cond = when(n) if i == 0 else (lambda: _tmp_steps(workdir))
    deadline = time.monotonic() + 180
    while not cond():
      if proc.poll() is not None or time.monotonic() > deadline:
        proc.kill()
        pytest.fail(f"no moment to send {sig!r} (exit {proc.wait()}): {log.read_text()[-3000:]}")
      time.sleep(0.001)
    os.kill(proc.pid, sig)
  proc.wait(180)
  return proc.returncode, log.read_text(), _lines(workdir)[n:]


def _lines(workdir):  # complete records of metrics.jsonl (the child may be writing the last)
  text = (workdir / "metrics.jsonl").read_text() if (workdir / "metrics.jsonl").exists() else ""
  return [json.loads(x) for x in text.split("\n")[:-1] if x.strip()]


def _trained_to(workdir, n, step):
  return lambda: any(r["event"] == "train" and r["step"] >= step for r in _lines(workdir)[n:])


def _tmp_steps(workdir):  # saves begun, not committed: orbax writes <step>.orbax-checkpoint-tmp
  d = workdir / "checkpoints"
  return [int(p.name.split(".")[0]) for p in d.iterdir()
          if ".orbax-checkpoint-tmp" in p.name] if d.exists() else []


def _assert_matches(workdir, reference):
  """Every logged train loss and the final params equal the uninterrupted run's, bit for bit."""
  want = {r["step"]: r["loss"] for r in helpers.events(helpers.read_jsonl(
      reference / "metrics.jsonl"), "train")}
  records = helpers.read_jsonl(workdir / "metrics.jsonl")
  trained = helpers.events(records, "train")
  assert [r["step"] for r in trained if r["loss"] != want[r["step"]]] == []
  assert trained[-1]["step"] == STEPS and records[-1]["termination"] == "COMPLETED"
  got, ref = (helpers.flat(helpers.load_params(w, STEPS)) for w in (workdir, reference))
  assert ref and got.keys() == ref.keys() and all(np.array_equal(got[p], ref[p]) for p in ref)
  return records


def _finite_checkpoints(workdir):  # every checkpoint restores, finite params and val loss
  for step in helpers.checkpoint_steps(workdir):
    assert np.isfinite(helpers.checkpoint_meta(workdir, step)["val_loss"]), step
    for path, leaf in helpers.flat(helpers.load_params(workdir, step)).items():
      assert np.isfinite(leaf).all(), f"checkpoint {step}: {path} is not finite"
  return helpers.checkpoint_steps(workdir)


def _one_error(text, kind):
  """One ERROR line of this kind; tracebacks only from library threads, none from pregate."""
  errors = [x for x in text.splitlines() if x.startswith("ERROR:")]
  assert len(errors) == 1 and errors[0].startswith(f"ERROR: {kind}: "), text[-3000:]
  ours = tuple(f'File "{helpers.REPO}/{pkg}/' for pkg in ("train", "models", "gates", "configs"))
  assert not [x for x in text.splitlines() if x.strip().startswith(ours)]
  return errors[0]


def test_sigkill_anywhere_then_rerun_is_bitwise_identical(flags, whole, tmp_path):
  """Killed right after the first save committed, between two saves, and while an async save
  is being written: each re-run resumes right after the newest committed step."""
  workdir, starts = tmp_path / "run", []

  def kill(when):
    starts.append(max(helpers.checkpoint_steps(workdir), default=0))
    assert _run(workdir, flags, signal.SIGKILL, when=when, env=DELAY)[0] == -signal.SIGKILL

  kill(lambda n: (workdir / "checkpoints" / "5").is_dir)
  kill(lambda n: lambda: _trained_to(workdir, n, starts[-1] + 7)() and not _tmp_steps(
      workdir) and starts[-1] + 5 in helpers.checkpoint_steps(workdir))  # between saves
  while len(starts) < 5 and not _tmp_steps(workdir):  # until a kill lands mid-save
    kill(lambda n: lambda: _tmp_steps(workdir))
  [torn] = _tmp_steps(workdir)  # a kill landed while that save was being written
  assert torn not in helpers.checkpoint_steps(workdir)
  starts.append(helpers.checkpoint_steps(workdir)[-1])
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0 and torn in helpers.checkpoint_steps(workdir), res.stderr[-3000:]
  records = _assert_matches(workdir, whole)
  gates = [i for i, r in enumerate(records) if r["event"] == "gate"]
  firsts = [next(r["step"] for r in records[i:] if r["event"] == "train") for i in gates]
  assert firsts == [s + 1 for s in starts], (firsts, starts)


def test_sigint_and_sigterm_preempt_cleanly(flags, whole, tmp_path):
  """Each signal finishes the step, saves it and exits 75; a second SIGTERM while that save
  is being written changes nothing. Re-running then completes exactly as if never stopped."""
  workdir, reached = tmp_path / "run", 0
  for sigs in ([signal.SIGINT], [signal.SIGTERM, signal.SIGTERM]):
    rc, out, new = _run(workdir, flags, *sigs, env=DELAY,
                        when=lambda n, r=reached: _trained_to(workdir, n, r + 3))
    assert rc == 75 and "Traceback" not in out, out[-3000:]
    end = helpers.events(new, "end")[-1]
    assert end["termination"] == "PREEMPTED" and reached < end["step"] < STEPS, end
    reached = end["step"]
    assert _finite_checkpoints(workdir)[-1] == reached and not _tmp_steps(workdir)
    meta = helpers.checkpoint_meta(workdir, reached)
    assert (meta["step"], meta["termination"]) == (reached, "PREEMPTED"), meta
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  _assert_matches(workdir, whole)


# The largest lr config_sanity allows; decoupled decay lr*wd = 300 makes each step w <- -299 w.
DIVERGE = ("--config.optimizer.lr=100", "--config.optimizer.weight_decay=3",
           "--config.optimizer.grad_clip=0", "--config.guard.max_rollbacks=0")  # the stop path


@pytest.mark.parametrize("skip", [0, 1])
def test_divergence_stops_before_saving_poison(flags, prepared_data, tmp_path, skip):
  """lr 100 with weight decay 3 multiplies the weights by ~-300 a step until the forward pass
  overflows. skip=0 stops there; skip=1 skips that update and stops at the next."""
  workdir = tmp_path / "run"
  res = helpers.run_main(*flags, *DIVERGE,
                         f"--config.optimizer.skip_nonfinite={skip}", workdir=workdir)
  assert res.rc == 4, res.stderr[-3000:]
  error = _one_error(res.stderr, "NonFiniteLossError")
  records = helpers.read_jsonl(workdir / "metrics.jsonl")
  end = helpers.events(records, "end")[-1]
  assert end["termination"] == "NONFINITE" and f"step {end['step']}" in error, end
  trained = helpers.events(records, "train")
  bad = [r["step"] for i, r in enumerate(trained) if r["skipped"] > (trained[i - 1]["skipped"]
                                                                     if i else 0)]
  assert 5 in _finite_checkpoints(workdir) and max(_finite_checkpoints(workdir)) < end["step"]
  if not skip:
    logged = [[r["loss"], r["grad_norm"], r["param_norm"]] for r in trained]
    assert np.isfinite(logged).all() and not bad and end["step"] == trained[-1]["step"] + 1
    return
  # Skipped updates are counted in the log; the run stops once more than `skip` were.
  assert len(bad) == skip and end["step"] > bad[0] and "skipped" in error, (bad, end)
  # In-process, those very steps: a skipped update leaves the params as they were, finite.
  import jax

  from models.config import ModelConfig
  from train.data import pipeline as data_lib
  from train.state import step as step_lib
  cfg = helpers.tiny_config(prepared_data, {"optimizer.lr": 100.0, "optimizer.weight_decay": 3.0,
                                                "optimizer.grad_clip": 0})
  tx = step_lib.make_optimizer(cfg)
  graphdef, init = step_lib.init_fn(ModelConfig.from_dict(cfg.model.to_dict()), tx, cfg.seed)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, step_lib.lr_schedule(cfg),
                                          skip_nonfinite=True))
  it = data_lib.make_train_iter(data_lib.open_split(prepared_data, "train"), seed=cfg.seed,
                                global_batch=4, seq_len=32, num_batches=end["step"])
  state, skipped = jax.jit(init)(), 0
  for batch in it:
    before = helpers.flat(jax.device_get(state.params))
    state, m = step(state, batch)
    after, skipped = helpers.flat(jax.device_get(state.params)), skipped + int(m["skipped"])
    assert not m["skipped"] or all(np.array_equal(after[k], v) and np.isfinite(v).all()
                                   for k, v in before.items())
  assert skipped


def _damage(workdir, step, how):
  d = workdir / "checkpoints" / str(step)
  if how == "metadata":
    return (d / "meta" / "metadata").write_text('{"schema": "pregate.chec')
  for f in sorted((d / "params" / "ocdbt.process_0" / "d").iterdir()):
    os.truncate(f, f.stat().st_size // 2) if how == "truncate" else f.unlink()


def test_damaged_checkpoints(flags, whole, tmp_path):
  """Truncated arrays (20), deleted arrays (15), torn metadata (10) and a leftover incomplete
  save: resume warns about each, sets them aside, restarts from 5 and ends as if intact."""
  workdir = shutil.copytree(whole, tmp_path / "run")
  ckpts = workdir / "checkpoints"
  for step, how in ((20, "truncate"), (15, "delete"), (10, "metadata")):
    _damage(workdir, step, how)
  shutil.copytree(ckpts / "5", ckpts / "15.orbax-checkpoint-tmp")  # an incomplete save
  n = len(helpers.read_jsonl(workdir / "metrics.jsonl"))
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  warned = [x.split(" is damaged")[0].rsplit("/", 1)[1] for x in res.error_lines
            if " is damaged, skipped" in x]
  assert warned == ["20", "15", "10"], res.stderr[-3000:]
  assert sorted(p.name for p in ckpts.iterdir() if ".damaged-" in p.name) == \
      ["10.damaged-0", "15.damaged-0", "20.damaged-0"]
  assert helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl")[n:], "train")[0]["step"] == 6
  _assert_matches(workdir, whole)

  # Every checkpoint damaged: refuse (exit 2) rather than train from scratch over them; --init
  # from a damaged one is one line too, and train.inspect reports torn metadata.
  workdir = shutil.copytree(whole, tmp_path / "all-damaged")
  for step in (5, 10, 15, 20):
    _damage(workdir, step, "truncate")
  _damage(workdir, 20, "metadata")
  before = helpers.snapshot(workdir / "checkpoints")
  trained = helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "train")
  for target, extra, needle in ((workdir, [], "no usable checkpoint"),
                                (tmp_path / "fresh", [f"--init={workdir}:15"], "damaged")):
    res = helpers.run_main(*flags, *extra, workdir=target)
    assert res.rc == 2 and needle in _one_error(res.stderr, "CheckpointError")
  assert helpers.snapshot(workdir / "checkpoints") == before
  assert helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "train") == trained
  res = helpers.run_module("train.cli.inspect_ckpt", workdir, "--step=20", timeout=120)
  assert res.returncode == 2 and "unreadable" in _one_error(res.stderr, "CheckpointError")
  # Truncated arrays: found by reading them once.
  res = helpers.run_module("train.cli.inspect_ckpt", workdir, "--step=15", timeout=120)
  assert res.returncode == 2 and "is damaged" in _one_error(res.stderr, "CheckpointError")


def test_workdir_ownership(flags, whole, tmp_path):
  """Other architecture or data: refused, untouched. Safe (eval_every): allowed and logged.
  Schedule (train_steps): refused without --allow_config_change, recorded with it."""
  workdir = shutil.copytree(whole, tmp_path / "run")
  before = helpers.snapshot(workdir)
  for change, needles in (("model.d_ff=48", ["different experiment", "model.d_ff: 64 -> 48"]),
                          ("data.val_fraction=0.2", ["different experiment", "val_fraction"]),
                          ("train_steps=25", ["train_steps: 20 -> 25", "--allow_config_change"])):
    res = helpers.run_main(*flags, f"--config.{change}", workdir=workdir)
    assert res.rc == 2 and len(res.error_lines) == 1, res.stderr[-3000:]
    error = _one_error(res.stderr, "WorkdirOwnershipError")
    assert all(x in error for x in needles), error
    assert helpers.snapshot(workdir) == before
  safe = shutil.copytree(whole, tmp_path / "safe")
  res = helpers.run_main(*flags, "--config.eval.eval_every=5", workdir=safe)
  assert res.rc == 0 and "eval.eval_every: 10 -> 5" in res.stderr, res.stderr[-3000:]
  owner = json.loads((safe / "run.json").read_text())["changes"][-1]
  assert owner["safe"] == ["eval.eval_every: 10 -> 5"], owner
  res = helpers.run_main(*flags, "--config.train_steps=25", "--allow_config_change",
                         workdir=workdir)
  assert res.rc == 0 and helpers.checkpoint_steps(workdir)[-1] == 25, res.stderr[-3000:]
  assert "train_steps: 20 -> 25" in helpers.checkpoint_meta(workdir, 25)["config_changes"]


@pytest.mark.parametrize("env", [{"PREGATE_TEST_ENOSPC_AT": "10"},
                                 {"PREGATE_TEST_DISK_FULL": "1"}], ids=["enospc", "disk-full"])
def test_full_disk_stops_with_one_line_and_keeps_checkpoints(flags, tmp_path, env):
  """The second save fails: ENOSPC from the write itself, or the free-space check before it.
  One typed line, exit 4, DISK_FULL recorded, and the first checkpoint intact."""
  workdir = tmp_path / "run"
  rc, out, _ = _run(workdir, flags, env=env)
  assert rc == 4 and "Traceback" not in out, out[-3000:]
  _one_error(out, "DiskSpaceError")
  end = helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "end")[-1]
  assert (end["termination"], end["step"]) == ("DISK_FULL", 10), end
  assert _finite_checkpoints(workdir) == [5] and not _tmp_steps(workdir)
