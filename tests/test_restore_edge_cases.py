"""Restore edge cases, each with its test: old checkpoints without a fingerprint load with one
warning; --init from a damaged checkpoint refuses before the new workdir exists; a damaged
array read is one line, not buried under tensorstore/asyncio thread tracebacks; a second
SIGTERM during a multi-process save changes nothing; no refusal claims a workdir, and the
record of a run that never started yields to a corrected config."""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import portpicker
import pytest

import helpers
import shared_runs
from train.ckpt.metadata import Metadata

pytestmark = pytest.mark.e2e


STEP = 20
TWO = helpers.fake_devices(2)
NOISE = ("Traceback", "Event loop is closed", "Exception ignored", "never retrieved")


@pytest.fixture(scope="module")
def trained(trained_tiny, tmp_path_factory) -> Path:
  return shared_runs.copy_of(trained_tiny, tmp_path_factory, "loose")


def one_error(res: helpers.Result, *needles: str) -> str:
  """Exit 2 and exactly one `ERROR:` line holding every needle; no traceback anywhere (other
  stderr lines are absl log lines, e.g. the Chinchilla bypass warning of these tiny runs)."""
  out = res.stdout + res.stderr
  errors = [x for x in res.error_lines if x.startswith("ERROR:")]
  assert res.rc == 2 and len(errors) == 1, out[-3000:]
  assert not any(x in out for x in NOISE), out[-3000:]
  assert all(x[:1] in "IWE" and x[1:5].isdigit() for x in res.error_lines if x != errors[0]), \
      res.stderr[-3000:]
  for needle in needles:
    assert needle in errors[0], f"{needle!r} missing from: {errors[0]}"
  return errors[0]


def _main(*args: str, workdir: Path, env: dict | None = None) -> helpers.Result:
  """`python -m train.main --config=CONFIG --workdir=W ARGS` with extra environment."""
  return helpers.command("train.main", f"--config={helpers.CONFIG}", f"--workdir={workdir}",
                         *args, env=env)


def _meta_path(work: Path, step: int = STEP) -> Path:
  return work / "checkpoints" / str(step) / "meta" / "metadata"


def _truncate_arrays(work: Path, step: int = STEP) -> None:
  for f in (work / "checkpoints" / str(step) / "params" / "ocdbt.process_0" / "d").iterdir():
    os.truncate(f, f.stat().st_size // 2)


def test_old_checkpoint_loads_with_one_warning(trained, tmp_path, prepared_data):
  work = Path(shutil.copytree(trained, tmp_path / "old"))
  for step in (10, STEP):
    meta = json.loads(_meta_path(work, step).read_text())
    del meta["fingerprint"]
    _meta_path(work, step).write_text(json.dumps(meta))
  res = helpers.command("train.cli.evaluate", f"--checkpoint={work}")
  assert res.rc == 0, res.stderr[-3000:]
  warnings = [x for x in res.error_lines if "no functional fingerprint" in x]
  assert len(warnings) == 1 and warnings[0].startswith("W"), res.stderr[-3000:]
  for needle in ("model.rope_theta", "model.norm_eps", "model.dtype", "model.n_heads",
                 "pregate-stamp", "resume it once"):
    assert needle in warnings[0], warnings[0]
  res = helpers.command("train.cli.inspect_ckpt", work, "--quality")
  assert res.rc == 0 and "fingerprint   none: the non-shape fields" in res.stdout, res.stdout
  # The fix it names: resume once with the data present; the next save records one.
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, {"train_steps": STEP + 5}),
                         helpers.FORCE, "--allow_config_change", workdir=work)
  assert res.rc == 0 and "no functional fingerprint" in res.stderr, res.stderr[-3000:]
  assert helpers.checkpoint_meta(work, STEP + 5)["fingerprint"]["by"] == "save"


@pytest.mark.parametrize("damage", ["truncated-arrays", "torn-metadata", "no-metadata",
                                    "missing-step"])
def test_init_from_damaged_checkpoint_refuses_before_writing(trained, tmp_path, prepared_data,
                                                             damage):
  src = Path(shutil.copytree(trained, tmp_path / "src"))
  if damage == "truncated-arrays":
    _truncate_arrays(src)
  elif damage == "torn-metadata":
    _meta_path(src).write_text('{"schema": "pregate.chec')
  elif damage == "no-metadata":
    _meta_path(src).unlink()
  spec = f"{src}:{STEP if damage != 'missing-step' else 15}"
  work = tmp_path / "fresh"
  res = _main(*helpers.tiny_flags(prepared_data), helpers.FORCE, f"--init={spec}",
              workdir=work, env=TWO)
  needle = {"truncated-arrays": "is damaged", "torn-metadata": "unreadable metadata",
            "no-metadata": "pregate-stamp", "missing-step": "not found"}[damage]
  line = one_error(res, needle)
  assert not work.exists(), sorted(os.listdir(work))
  if damage == "truncated-arrays":
    assert "Truncated" in line or "Error reading" in line, line


def test_damaged_array_read_is_one_line(trained, tmp_path):
  """Two devices: the failed shard read leaves the other pending reads to fail on background
  threads; pregate's line names the array and the cause, and nothing else is printed."""
  work = Path(shutil.copytree(trained, tmp_path / "damaged"))
  _truncate_arrays(work)
  for module, args in (("train.cli.evaluate", [f"--checkpoint={work}"]),
                       ("train.cli.sample", [f"--checkpoint={work}", "--max_new_tokens=2"]),
                       ("train.cli.inspect_ckpt", [str(work)])):
    res = helpers.command(module, *args, env=TWO)
    line = helpers.assert_one_line_error(res, "CheckpointError", "is damaged")
    assert "Truncated" in line or "Error reading" in line, line
    assert res.error_lines == [line], res.stderr[-3000:]


def test_resume_over_a_damaged_step_prints_no_thread_tracebacks(trained, tmp_path,
                                                                prepared_data):
  work = Path(shutil.copytree(trained, tmp_path / "resume"))
  _truncate_arrays(work)
  res = _main(*helpers.tiny_flags(prepared_data, {"train_steps": STEP + 5}), helpers.FORCE,
              "--allow_config_change", workdir=work, env=TWO)
  assert res.rc == 0, res.stderr[-3000:]
  assert "is damaged, skipped" in res.stderr and not any(x in res.stderr for x in NOISE), \
      res.stderr[-3000:]


def test_never_started_record_yields_to_a_corrected_config(tmp_path, prepared_data):
  """A run.json whose run never trained (no checkpoint, no train record) does not lock the
  user out: the corrected command starts and owns the workdir; a started one still refuses."""
  work = tmp_path / "run"
  work.mkdir()
  wrong = helpers.tiny_config(prepared_data, {"model.d_ff": 48}).to_dict()
  (work / "run.json").write_text(json.dumps({"config": wrong, "created": 0}))
  (work / "metrics.jsonl").write_text(json.dumps({"event": "gate"}) + "\n")
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, {"train_steps": 10}), helpers.FORCE,
                         workdir=work)
  assert res.rc == 0, res.stderr[-3000:]
  assert "never started" in res.stderr and "model.d_ff: 48 -> 64" in res.stderr
  assert json.loads((work / "run.json").read_text())["config"]["model"]["d_ff"] == 64
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, {"train_steps": 10,
                                                             "model.d_ff": 48}),
                         helpers.FORCE, workdir=work)
  one_error(res, "WorkdirOwnershipError", "different experiment")


def test_refusal_after_preflight_leaves_no_owner_record(trained, tmp_path, prepared_data):
  """A --init whose parameters fail the step-0 check (tampered after save; no fingerprint, as
  from an older pregate) is refused after the data is opened: the workdir holds no run.json,
  gate.json or metrics.jsonl, so the corrected command is not 'a different experiment'."""
  import numpy as np

  from train.ckpt.checkpointer import Checkpointer
  params = helpers.load_params(trained, STEP)
  params["embed"] = params["embed"] * 1.5
  meta = helpers.checkpoint_meta(trained, STEP)
  del meta["fingerprint"]
  ckpt = Checkpointer(str(tmp_path / "bad" / "checkpoints"), keep=1, keep_best=0,
                      async_save=False)
  ckpt.save(STEP, params, {"unused": np.zeros(1)}, None, Metadata.from_json(meta),
            meta["val_loss"])
  ckpt.close()
  work = tmp_path / "warm"
  res = helpers.run_main(*helpers.tiny_flags(prepared_data), helpers.FORCE,
                         f"--init={tmp_path / 'bad'}", workdir=work)
  one_error(res, "InitEvalMismatchError")
  left = {p.name for p in work.iterdir()} if work.exists() else set()
  assert not left & {"run.json", "gate.json", "metrics.jsonl"}, left
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, {"train_steps": 10}), helpers.FORCE,
                         f"--init={trained}", workdir=work)
  assert res.rc == 0, res.stderr[-3000:]


def _start_two(workdir: Path, argv: list[str], mark: Path, log: Path) -> list:
  port = portpicker.pick_unused_port()
  env = {**TWO, "PREGATE_TEST_SAVE_MARK": str(mark), "PREGATE_TEST_SAVE_SLEEP": "3"}
  return [helpers.spawn([str(helpers.CHILDREN / "slow_save_main.py"), f"--config={helpers.CONFIG}",
                         f"--workdir={workdir}", *argv, f"--coordinator_address=127.0.0.1:{port}",
                         "--num_processes=2", f"--process_id={i}"], f"{log}.{i}", env=env)
          for i in range(2)]


def _wait(cond, procs, what: str, timeout: float = 300) -> None:
  deadline = time.monotonic() + timeout
  while not cond():
    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
      for p in procs:
        p.kill()
      pytest.fail(f"never saw {what} (exit codes {[p.wait() for p in procs]})")
    time.sleep(0.05)


def test_second_sigterm_during_multi_process_save(tmp_path, prepared_data):
  """SIGTERM reaches both processes, both stop at one step and save it; a second SIGTERM to
  each while that save is under way changes nothing: both exit 75, the step is committed and
  loads (fingerprint verified), nothing half-written is left."""
  workdir, mark, log = tmp_path / "run", tmp_path / "saving", tmp_path / "log"
  argv = [*helpers.tiny_flags(prepared_data, {"train_steps": 100000, "eval.eval_every": 100000,
                                              "checkpoint.save_every": 100000,
                                              "logging.log_every": 5,
                                              "batch.global_batch": 8}), helpers.FORCE]
  procs = _start_two(workdir, argv, mark, log)
  metrics = workdir / "metrics.jsonl"
  _wait(lambda: metrics.exists() and helpers.events(helpers.read_jsonl(metrics), "train"),
        procs, "a train record")
  for p in procs:
    p.send_signal(signal.SIGTERM)
    time.sleep(0.3)
  _wait(lambda: all(Path(f"{mark}.{i}").exists() for i in range(2)), procs, "the save start")
  for p in procs:
    p.send_signal(signal.SIGTERM)
  codes = [p.wait(300) for p in procs]
  tails = "\n".join(Path(f"{log}.{i}").read_text()[-2000:] for i in range(2))
  assert codes == [75, 75], tails
  end = helpers.events(helpers.read_jsonl(metrics), "end")[-1]
  assert end["termination"] == "PREEMPTED", end
  assert helpers.checkpoint_steps(workdir) == [end["step"]], tails
  assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
  from train.restore import load_for_eval
  assert load_for_eval(str(workdir)).step == end["step"]
  meta = helpers.checkpoint_meta(workdir, end["step"])
  print(f"fingerprint saved by 2 processes on mesh {meta['mesh']} vs recomputed in 1 process on "
        f"1 device: {_recomputed_difference(workdir, end['step'], meta):.3g}")


def _recomputed_difference(workdir: Path, step: int, meta: dict) -> float:
  import jax

  from gates import arch_match
  from models.config import ModelConfig
  from train.ckpt import fingerprint, resume
  from train.state import sharding
  from train.state import step as step_lib
  from train.state.setup import TrainSetup
  cfg = ModelConfig.from_dict(meta["model"])
  setup = TrainSetup.build(cfg, step_lib.make_optimizer(helpers.tiny_config(None)), 0,
                           sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
  params, _ = resume.init_params(setup, f"{workdir}:{step}")
  return arch_match.fingerprint_difference(meta["fingerprint"], fingerprint.compute(params, cfg))
