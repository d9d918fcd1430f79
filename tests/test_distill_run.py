"""Distillation through the real command: a teacher trained by `train.main` teaches a student
(`--teacher=PATH[:STEP]`). alpha = 0 gives bitwise the ordinary run's parameters; a distilling
run on a 2-device mesh killed mid-run resumes bitwise; a teacher with another tokenizer, another
vocabulary, damaged metadata or no checkpoint is refused in one line before anything compiles;
resuming with a different teacher (or none) is refused, the same one spelled otherwise is not.
"""
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest
import test_main_cli

import helpers

pytestmark = pytest.mark.e2e


STEPS = 20
DISTILL = {"distill.alpha": 0.5, "distill.temperature": 2.0}
# Two CPU devices, parameters (the teacher's too) split over fsdp, batches over both.
TWO_DEVICES = {"mesh.cpu_devices": 2, "mesh.data": 1, "mesh.fsdp": 2}


def _flags(data_dir, **over):
  return [*helpers.tiny_flags(data_dir, {"train_steps": STEPS, **over}), helpers.FORCE]


def _params(workdir, step=STEPS):
  return helpers.flat(helpers.load_params(workdir, step))


def _assert_same_params(a, b, step=STEPS):
  got, want = _params(a, step), _params(b, step)
  assert want and got.keys() == want.keys()
  assert [p for p in want if not np.array_equal(got[p], want[p])] == []


@pytest.fixture(scope="module")
def teacher(trained_tiny):
  """The shared tiny run (tests/shared_runs.trained: these flags, 20 steps), read only: the
  teacher, and the reference for alpha = 0."""
  return trained_tiny


def test_alpha_zero_with_a_teacher_is_bitwise_ordinary_training(teacher, prepared_data,
                                                                tmp_path):
  """Same flags and seed as the teacher's own (ordinary) run, plus a teacher at alpha = 0."""
  workdir = tmp_path / "alpha0"
  res = helpers.run_main(*_flags(prepared_data, **{"distill.alpha": 0.0}),
                         f"--teacher={teacher}", workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  assert "alpha 0: ordinary training" in res.stderr
  _assert_same_params(workdir, teacher)
  meta = helpers.checkpoint_meta(workdir, STEPS)
  recorded = meta["distill"]["teacher"]
  assert meta["distill"]["alpha"] == 0.0 and recorded["step"] == STEPS
  assert recorded["path"] == str(teacher / "checkpoints")
  assert recorded["model"] == helpers.checkpoint_meta(teacher, STEPS)["model"]
  assert len(recorded["fingerprint_sha256"]) == 64 and len(recorded["tokenizer_fingerprint"]) == 64


@pytest.fixture(scope="module")
def distilled(teacher, prepared_data, tmp_path_factory):
  """A distilling run (alpha 0.5, τ 2) on a 2-device fsdp mesh, never interrupted."""
  workdir = tmp_path_factory.mktemp("distilled") / "run"
  flags = [*_flags(prepared_data, **DISTILL, **TWO_DEVICES, **{"checkpoint.save_every": 5,
                                                              "logging.log_every": 1}),
           f"--teacher={teacher}"]
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  return workdir, flags, res


def test_distilling_run_records_its_teacher_and_terms(distilled, teacher):
  workdir, _, res = distilled
  assert "distill: teacher" in res.stderr and "FLOPs/token" in res.stderr
  meta = helpers.checkpoint_meta(workdir, STEPS)
  assert (meta["mesh"]["data"], meta["mesh"]["fsdp"]) == (1, 2)
  assert meta["distill"]["alpha"] == 0.5 and meta["distill"]["temperature"] == 2.0
  assert meta["distill"]["teacher"]["step"] == STEPS
  train = helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "train")
  last = train[-1]
  assert last["kl"] > 0 and last["ce"] > 0
  assert last["loss"] == pytest.approx(0.5 * last["ce"] + 0.5 * last["kl"], rel=1e-4)
  # Distilling changes the trajectory: not the teacher's own (ordinary) parameters.
  assert not np.array_equal(_params(workdir)["embed"], _params(teacher)["embed"])


def _tmp_steps(workdir):
  d = workdir / "checkpoints"
  return [p for p in d.iterdir() if ".orbax-checkpoint-tmp" in p.name] if d.exists() else []


def test_killed_distilling_run_resumes_bitwise(distilled, tmp_path):
  """SIGKILL between saves (step 5 committed, step 7+ trained), then the same command."""
  reference, flags, _ = distilled
  workdir = tmp_path / "run"
  log = tmp_path / "killed.log"
  proc = helpers.spawn([str(helpers.CHILDREN / "faulty_main.py"), f"--config={helpers.CONFIG}",
                        f"--workdir={workdir}", *flags], log, env={"PREGATE_TEST_DELAY": "0.1"})
  deadline = time.monotonic() + 180

  def trained_past(step):
    path = workdir / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return any(json.loads(x).get("event") == "train" and json.loads(x)["step"] >= step
               for x in lines if x.strip())

  while not (5 in helpers.checkpoint_steps(workdir) and trained_past(7)
             and not _tmp_steps(workdir)):
    if proc.poll() is not None or time.monotonic() > deadline:
      proc.kill()
      pytest.fail(f"no moment to kill (exit {proc.wait()}): {log.read_text()[-3000:]}")
    time.sleep(0.002)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait(60) == -signal.SIGKILL
  assert helpers.checkpoint_steps(workdir)[-1] < STEPS
  res = helpers.run_main(*flags, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  _assert_same_params(workdir, reference)
  want = {r["step"]: r["loss"] for r in helpers.events(
      helpers.read_jsonl(reference / "metrics.jsonl"), "train")}
  got = helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "train")
  assert [r["step"] for r in got if r["loss"] != want[r["step"]]] == []


def _edit_meta(src, dst, edit):
  """A copy of teacher `src` whose latest checkpoint's metadata file is edited by `edit`."""
  shutil.copytree(src, dst)
  path = dst / "checkpoints" / str(STEPS) / "meta" / "metadata"
  path.write_text(edit(path.read_text()))
  return dst


def _byte_tokenizer(text):
  meta = json.loads(text)
  meta["tokenizer"] = {"type": "byte"}
  return json.dumps(meta)


REFUSALS = {
    "other_tokenizer": (lambda t, tmp: _edit_meta(t, tmp / "t", _byte_tokenizer), {},
                        ("tokenizer: expected char (65 symbols) found byte", "cannot teach")),
    "other_vocab": (lambda t, tmp: t, {"model.vocab_size": 80},
                    ("its vocabulary has 65 ids but the student's model.vocab_size=80",)),
    "damaged_metadata": (lambda t, tmp: _edit_meta(t, tmp / "t", lambda x: x[: len(x) // 2]),
                         {}, ("unreadable metadata",)),
    "missing": (lambda t, tmp: tmp / "nowhere", {}, ("no such directory", "--teacher=")),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unusable_teacher_is_refused_before_compile(case, teacher, prepared_data, tmp_path):
  make, over, needles = REFUSALS[case]
  path = make(teacher, tmp_path)
  workdir = tmp_path / "run"
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, {**test_main_cli.PASSING, **over}),
                         f"--teacher={path}", workdir=workdir, count_compiles=True)
  line = helpers.assert_one_line_error(res, "TeacherError", "distill.teacher=", *needles)
  assert res.compiles == 0, f"{res.compiles} XLA compiles before refusing: {line}"
  assert not workdir.exists()


def test_resume_with_a_different_teacher_is_refused(distilled, teacher, tmp_path):
  """The teacher is known by content: the same checkpoint spelled another way resumes; another
  step of the same run (or no teacher at all) is refused, before anything compiles."""
  workdir = shutil.copytree(distilled[0], tmp_path / "run")
  flags = [f for f in distilled[1] if not f.startswith("--teacher=")]
  before = helpers.snapshot(workdir / "checkpoints")
  same = helpers.run_main(*flags, f"--teacher={teacher / 'checkpoints'}:{STEPS}",
                          workdir=workdir)
  assert same.rc == 0, same.stderr[-3000:]  # a finished run: resumed, trains nothing
  res = helpers.run_main(*flags, f"--teacher={teacher}:10", workdir=workdir,
                         count_compiles=True)
  helpers.assert_one_line_error(res, "trained with another teacher", "teacher step 20 -> 10",
                                "functional fingerprint")
  assert res.compiles == 0
  res = helpers.run_main(*flags, "--teacher=", workdir=workdir)  # refused in the loop
  errors = [x for x in res.stderr.splitlines() if x.startswith("ERROR:")]
  assert res.rc == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
  assert "trained with another teacher" in errors[0] and "now without one" in errors[0]
  assert helpers.snapshot(workdir / "checkpoints") == before
