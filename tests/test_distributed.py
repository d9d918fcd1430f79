"""Topology never changes the math: a run split over two OS processes (gloo, fake CPU devices),
over 4 or 8 devices in one process, or over 1 device trains the same losses; a checkpoint moves
between process counts, meshes and device counts; an impossible mesh is refused up front."""
import json
import os
import time
from pathlib import Path

import numpy as np
import portpicker
import pytest

import helpers

pytestmark = pytest.mark.multiprocess


STEPS, STOP_AT = 6, 3
BASE = {"train_steps": STEPS, "schedule.warmup_steps": 2, "eval.eval_every": 3,
        "logging.log_every": 1, "checkpoint.save_every": 3, "batch.global_batch": 8}
MESH_2X2 = {"mesh.data": 2, "mesh.fsdp": 2}
FSDP_8 = {"mesh.data": 1, "mesh.fsdp": 8}
GATE_LINE = "chinchilla gate bypassed"


def _flags(data_dir, mesh, *extra):
  return [*helpers.tiny_flags(data_dir, {**BASE, **mesh}), helpers.FORCE, *extra]


def _start(workdir, argv, devices, log, count_file=None):
  """One `python -m train.main` child on `devices` fake CPU devices; output goes to files so a
  chatty child never blocks on a full pipe."""
  env = helpers.fake_devices(devices)
  args = [f"--config={helpers.CONFIG}", f"--workdir={workdir}", *argv]
  if count_file is None:
    cmd = ["-m", "train.main", *args]
  else:
    env[helpers.COUNT_ENV] = str(count_file)
    cmd = [str(helpers.CHILDREN / "counting_main.py"), *args]
  return helpers.spawn(cmd, f"{log}.out", f"{log}.err", env=env), log


def _finish(started, timeout=150.0):
  """Wait for all children; when one fails or time runs out, kill the rest (a peer of a dead
  process would wait on the coordinator for minutes) and show every stderr tail."""
  t0, deadline = time.perf_counter(), time.perf_counter() + timeout
  procs = [p for p, _ in started]
  failed_at = None
  while any(p.poll() is None for p in procs):
    now = time.perf_counter()
    if failed_at is None and any(p.poll() not in (None, 0, 75) for p in procs):
      failed_at = now
    if now > deadline or (failed_at is not None and now - failed_at > 10):
      for p in procs:
        if p.poll() is None:
          p.kill()
          p.wait()
      break
    time.sleep(0.05)
  seconds = time.perf_counter() - t0
  results = [helpers.Result(p.returncode, Path(f"{log}.out").read_text(),
                            Path(f"{log}.err").read_text(), seconds) for p, log in started]
  tails = "\n".join(f"--- process {i} rc={r.rc} stderr tail:\n{r.stderr[-2500:]}"
                    for i, r in enumerate(results))
  return results, tails


def _run(workdir, argv, devices, want_rc=0):
  (res,), tails = _finish([_start(workdir, argv, devices, f"{workdir}-p")])
  assert res.rc == want_rc, tails
  return res


def _run_two(workdir, argv, devices_each=2):
  """Two OS processes joined by jax.distributed over 127.0.0.1; both must exit 0."""
  addr = f"127.0.0.1:{portpicker.pick_unused_port()}"
  common = [*argv, f"--coordinator_address={addr}", "--num_processes=2"]
  started = [_start(workdir, [*common, f"--process_id={i}"], devices_each, f"{workdir}-p{i}")
             for i in range(2)]
  results, tails = _finish(started)
  assert [r.rc for r in results] == [0, 0], tails
  return results


def _losses(workdir):
  """Train loss per step; each step logged exactly once (only process 0 writes the log)."""
  train = helpers.events(helpers.read_jsonl(Path(workdir) / "metrics.jsonl"), "train")
  assert [r["step"] for r in train] == list(range(1, STEPS + 1)), train
  return np.array([r["loss"] for r in train])


def _eval_in_this_process(workdir, data_dir, step="latest"):
  """(recorded val loss, the loss this 1-device process measures on the recorded batches)."""
  from train.data import pipeline as data_lib
  from train.restore import load_for_eval
  from train.state.step import cross_entropy
  restored = load_for_eval(str(workdir), step)
  arr = data_lib.open_split(data_dir, "val")
  batches = data_lib.reproduce_eval_batches(arr, restored.meta.eval_batches)
  losses = [float(cross_entropy(restored.model(b["inputs"]), b["targets"])) for b in batches]
  return restored.meta.val_loss, float(np.mean(losses))


def _params(workdir, step=STEPS):
  """Final parameters restored onto this process's single device, whatever saved them."""
  from flax import nnx

  from train.restore import load_for_eval
  model = load_for_eval(str(workdir), step).model
  return helpers.flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def single_4(root, prepared_data):
  """The reference: one process, 4 fake devices, mesh data=2 x fsdp=2, never interrupted."""
  _run(root / "single4", _flags(prepared_data, MESH_2X2), devices=4)
  return root / "single4"


@pytest.fixture(scope="module")
def fsdp_8(root, prepared_data):
  """One process, 8 fake devices, every parameter split 8 ways (mesh fsdp=8)."""
  _run(root / "fsdp8", _flags(prepared_data, FSDP_8), devices=8)
  return root / "fsdp8"


def test_two_process_run_matches_single_process(root, prepared_data, single_4):
  """Two processes x 2 devices must be the 4-device run (and the 1-device run), not merely
  train: a wrong per-process batch slice would still lower the loss."""
  workdir = root / "two"
  p0, p1 = _run_two(workdir, _flags(prepared_data, MESH_2X2))
  one = root / "one"
  _run(one, _flags(prepared_data, {"mesh.data": 1}), devices=1)
  two_losses = _losses(workdir)
  np.testing.assert_allclose(two_losses, _losses(single_4), rtol=1e-5)
  np.testing.assert_allclose(two_losses, _losses(one), rtol=1e-5)

  # Process 0 speaks for the job: one gate warning, one gate record, one final line.
  assert sum(GATE_LINE in line for line in p0.stderr.splitlines()) == 1, p0.stderr[-3000:]
  assert GATE_LINE not in p1.stderr, p1.stderr[-3000:]
  assert "final val loss" in p0.stdout and "final val loss" not in p1.stdout
  assert len(helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "gate")) == 1

  # The checkpoint both processes wrote loads in this 1-device process and reproduces its loss.
  recorded, measured = _eval_in_this_process(workdir, prepared_data)
  assert recorded == pytest.approx(measured, rel=1e-5)


def test_single_process_checkpoint_resumes_in_two_processes(root, prepared_data, single_4):
  """A job restarted with more processes must continue at the right batch: the data position
  is derived from the step, since no per-process iterator state exists for 2 processes."""
  workdir = root / "grow"
  flags = _flags(prepared_data, MESH_2X2)
  _run(workdir, [*flags, f"--stop_after_steps={STOP_AT}"], devices=4, want_rc=75)
  assert helpers.checkpoint_meta(workdir, STOP_AT)["termination"] == "PREEMPTED"
  _run_two(workdir, flags)
  np.testing.assert_allclose(_losses(workdir), _losses(single_4), rtol=1e-5)
  got, want = _params(workdir), _params(single_4)
  assert got.keys() == want.keys()
  for path in want:
    np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-6, err_msg=path)


def test_resume_on_fewer_devices_matches(root, prepared_data, fsdp_8):
  """Losing 6 of 8 devices mid-run and changing the mesh must not change the trajectory."""
  workdir = root / "shrink"
  _run(workdir, [*_flags(prepared_data, FSDP_8), f"--stop_after_steps={STOP_AT}"], devices=8,
       want_rc=75)
  _run(workdir, _flags(prepared_data, {"mesh.fsdp": 1, "mesh.data": 2}), devices=2)
  meta = helpers.checkpoint_meta(workdir, STEPS)
  assert meta["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}  # really ran on the new mesh
  np.testing.assert_allclose(_losses(workdir), _losses(fsdp_8), rtol=1e-5)
  assert meta["val_loss"] == pytest.approx(
      helpers.checkpoint_meta(fsdp_8, STEPS)["val_loss"], rel=1e-5)


def test_load_for_eval_from_8_devices_in_1_device_process(prepared_data, fsdp_8):
  """Evaluation happens on other hardware than training: an fsdp=8 checkpoint must restore
  onto 1 device and give the loss it recorded."""
  recorded, measured = _eval_in_this_process(fsdp_8, prepared_data)
  assert recorded == pytest.approx(measured, rel=1e-5)
  proc = helpers.run_module("train.cli.evaluate", f"--checkpoint={fsdp_8}", timeout=120,
                            env=helpers.fake_devices(1))
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = [json.loads(line.removeprefix("RESULT "))
             for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert len(results) == 1, proc.stdout[-3000:]
  assert results[0]["loss"] == pytest.approx(recorded, rel=1e-5), results[0]


@pytest.mark.parametrize("devices, mesh, message", [
    (1, {"mesh.data": 2}, "has 2 devices but 1 are present"),
    (3, {"mesh.data": 3}, "is not divisible by data x fsdp = 3"),
    (2, {"mesh.data": 1, "mesh.tensor": 2},
     "model.n_kv_heads=1 is not divisible by mesh.tensor=2"),
], ids=["product", "batch", "heads"])
def test_invalid_mesh_refused_before_compile(tmp_path, prepared_data, devices, mesh, message):
  """A mesh the devices, batch or heads cannot fill is a config error: one line, exit 2, and
  no compile spent first."""
  workdir, count = tmp_path / "run", tmp_path / "compiles"
  (res,), tails = _finish([_start(workdir, _flags(prepared_data, mesh), devices,
                                  tmp_path / "p", count_file=count)])
  assert res.rc == 2, tails
  errors = [line for line in res.stderr.splitlines() if line.startswith("ERROR:")]
  assert len(errors) == 1 and message in errors[0], tails
  assert "Traceback" not in res.stderr
  assert int(count.read_text()) == 0


def test_invalid_mesh_leaves_no_run_directory(tmp_path, prepared_data):
  """main.py's contract: everything that can refuse a run does so before the workdir is
  written, so a typo in the mesh leaves no half-made run (gate.json, metrics.jsonl) behind."""
  workdir = tmp_path / "run"
  (res,), tails = _finish([_start(workdir, _flags(prepared_data, {"mesh.data": 2}), 1,
                                  tmp_path / "p")])
  assert res.rc == 2, tails
  assert not workdir.exists(), sorted(os.listdir(workdir))
