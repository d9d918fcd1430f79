"""The fingerprint matrix: metadata that lies without changing a shape never loads.

For each non-shape field (rope_theta, norm_eps, the compute dtype, the head split with every
shape unchanged) x each load path (resume, --init, load_for_eval, pregate-eval, pregate-sample,
pregate-export, a distillation teacher), a checkpoint whose metadata was edited in that field
is refused with one line and nothing is written; the unedited checkpoint loads on 1 device,
here (in process, and the commands), and on the save's own split in test_evaluate_sample.py and
test_arch_match.py (the same shared run) and test_faults.py (a resume of its own run). The
library paths run in-process (1 device) with a configured model that agrees with the edited
metadata, so only the functional fingerprint can catch the lie; the commands run as real
subprocesses on 2 devices.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import pytest
from test_restore_edge_cases import one_error

import helpers
import shared_runs
from gates import arch_match
from models.config import ModelConfig
from train.ckpt import checkpointer as ckpt_lib
from train.ckpt import fingerprint, resume
from train.restore import load_for_eval
from train.state import setup as run_state
from train.state import sharding
from train.state import step as step_lib

pytestmark = pytest.mark.e2e


STEP = 20
# Each edit keeps every tensor's shape and dtype (d_model 32: 2 heads of 16 with 1 kv head and
# 4 heads of 8 with 2 kv heads give the same projections).
EDITS = {"rope_theta": {"rope_theta": 500000.0}, "norm_eps": {"norm_eps": 1e-3},
         "dtype": {"dtype": "bfloat16"}, "head_split": {"n_heads": 4, "n_kv_heads": 2}}
TWO = helpers.fake_devices(2)
ONE = helpers.fake_devices(1)


@pytest.fixture(scope="module")
def trained(trained_tiny, tmp_path_factory) -> Path:
  """A 20-step run on this host's automatic device split (2 devices on a 2-core CI machine)."""
  return shared_runs.copy_of(trained_tiny, tmp_path_factory, "fingerprint")


def _init_from(setup, spec: str, tokenizer: dict | None, tx):
  """A warm start as the loop runs it: `init_params` before the data, `warm_state` after."""
  warm = resume.init_params(setup, spec)
  return resume.warm_state(setup, warm, spec, tokenizer, tx), warm[1]


def _copy(trained: Path, tmp_path: Path, field: str | None = None) -> Path:
  dst = Path(shutil.copytree(trained, tmp_path / f"run-{field}"))
  if field:
    path = dst / "checkpoints" / str(STEP) / "meta" / "metadata"
    meta = json.loads(path.read_text())
    meta["model"].update(EDITS[field])
    meta["config"]["model"].update(EDITS[field])
    path.write_text(json.dumps(meta))
  return dst


def _model(work: Path) -> dict:
  return helpers.checkpoint_meta(work, STEP)["model"]


def _setup(work: Path) -> run_state.TrainSetup:
  """The configured model a user whose config agrees with the metadata would build."""
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  tx = step_lib.make_optimizer(helpers.tiny_config(None))
  return run_state.TrainSetup.build(ModelConfig.from_dict(_model(work)), tx, 0, mesh)


def _resume(work: Path):
  ckpt = ckpt_lib.Checkpointer(str(work / "checkpoints"))  # writable, as the loop opens it
  try:
    return resume.restore_or_init(_setup(work), ckpt, None,
                                  helpers.checkpoint_meta(work, STEP)["tokenizer"])
  finally:
    ckpt.close()


PATHS = {
    "resume": _resume,
    "init": lambda w: _init_from(_setup(w), f"{w}:{STEP}",
                                 helpers.checkpoint_meta(w, STEP)["tokenizer"],
                                 step_lib.make_optimizer(helpers.tiny_config(None))),
    "load_for_eval": lambda w: load_for_eval(str(w), STEP),
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("field", sorted(EDITS))
def test_edited_field_refused_in_process(trained, tmp_path, field, path):
  work = _copy(trained, tmp_path, field)
  before = helpers.snapshot(work)
  with pytest.raises(arch_match.FingerprintMismatchError) as e:
    PATHS[path](work)
  line = str(e.value)
  assert "\n" not in line and "the metadata does not describe the tensors" in line, line
  for name in ("model.rope_theta", "model.norm_eps", "model.dtype", "model.n_heads"):
    assert name in line, line
  assert helpers.snapshot(work) == before


def test_unedited_loads_on_every_path_in_process(trained, tmp_path):
  work = _copy(trained, tmp_path)
  before = helpers.snapshot(work)
  for load in PATHS.values():
    load(work)
  assert helpers.snapshot(work) == before
  meta = helpers.checkpoint_meta(work, STEP)
  params, _ = resume.init_params(_setup(work), str(work))
  measured = fingerprint.compute(params, ModelConfig.from_dict(meta["model"]))
  diff = arch_match.fingerprint_difference(meta["fingerprint"], measured)
  print(f"fingerprint saved on mesh {meta['mesh']} vs recomputed on 1 device: {diff:.3g}")
  assert diff <= arch_match.FINGERPRINT_TOL["float32"] / 100


COMMANDS = {"pregate-eval": ("train.cli.evaluate",),
            "pregate-sample": ("train.cli.sample", "--max_new_tokens=4"),
            "pregate-export": ("train.cli.export", "--out={out}")}


# Every field on every restore path is refused in process (test_edited_field_refused_in_process);
# a command test shows the command surfaces that refusal as one line, so each takes one field.
@pytest.mark.parametrize("command, field", [
    ("pregate-eval", "rope_theta"), ("pregate-eval", "dtype"), ("pregate-sample", "norm_eps"),
    ("pregate-export", "head_split")])
def test_edited_field_refused_by_commands(trained, tmp_path, field, command):
  work = _copy(trained, tmp_path, field)
  before = helpers.snapshot(work)
  module, *extra = COMMANDS[command]
  out = tmp_path / "hf"
  res = helpers.command(module,
                        f"--checkpoint={work}", *(a.format(out=out) for a in extra), env=TWO)
  helpers.assert_one_line_error(res, "FingerprintMismatchError",
                                "the metadata does not describe the tensors")
  assert helpers.snapshot(work) == before
  assert not out.exists()  # the export wrote nothing


def test_unedited_loads_in_commands(trained, tmp_path):
  """The unedited checkpoint loads in the commands on 1 device, another count than the save's
  (2 on a 2-core host; on the save's own split: test_evaluate_sample.py's evaluate and sample
  commands on the same run)."""
  work = _copy(trained, tmp_path)
  res = helpers.command("train.cli.evaluate", f"--checkpoint={work}", env=ONE)
  assert res.rc == 0, res.stderr[-3000:]
  result = json.loads([x for x in res.stdout.splitlines() if x.startswith("RESULT ")][0][7:])
  assert result["abs_diff"] <= 1e-4 * result["recorded_val_loss"], result
  res = helpers.command("train.cli.sample", f"--checkpoint={work}", "--max_new_tokens=4", env=ONE)
  assert res.rc == 0 and "fingerprint" not in res.stderr, res.stderr[-3000:]


def _train(work: Path, data: str, *extra: str, overrides: dict | None = None,
           env: dict | None = None) -> helpers.Result:
  flags = [*helpers.tiny_flags(data, {"train_steps": STEP, **(overrides or {})}),
           helpers.FORCE, *extra]
  return helpers.command("train.main", f"--config={helpers.CONFIG}", f"--workdir={work}", *flags,
                         env=env, timeout=600)


def _model_flags(field: str) -> dict:
  return {f"model.{k}": v for k, v in EDITS[field].items()}


@pytest.mark.parametrize("field", ["dtype", "head_split"])  # the fingerprint; the config check
def test_edited_field_refused_on_resume_command(trained, tmp_path, prepared_data, field):
  """Resuming with the run's own config: a field the metadata misstates is refused (by the
  config comparison, or for the compute dtype, which a resume may change, by the
  fingerprint), before any step, and the workdir is left byte for byte as it was."""
  work = _copy(trained, tmp_path, field)
  before = helpers.snapshot(work)
  res = _train(work, prepared_data)
  one_error(res, "MismatchError", "model.")
  assert helpers.snapshot(work) == before


@pytest.mark.parametrize("field", ["head_split"])
def test_edited_field_refused_on_init_command(trained, tmp_path, prepared_data, field):
  """--init with a config that agrees with the edited metadata: only the fingerprint can
  refuse, and it does before the new workdir exists."""
  src = _copy(trained, tmp_path, field)
  work = tmp_path / "warm"
  res = _train(work, prepared_data, f"--init={src}:{STEP}", overrides=_model_flags(field))
  one_error(res, "FingerprintMismatchError")
  assert not work.exists(), sorted(p.name for p in work.iterdir())


@pytest.mark.parametrize("field", ["rope_theta"])
def test_edited_field_refused_as_teacher(trained, tmp_path, prepared_data, field):
  """A distillation run whose teacher checkpoint misstates a non-shape field is refused by the
  teacher's fingerprint before the student's workdir exists; the teacher is untouched."""
  teacher = _copy(trained, tmp_path, field)
  before = helpers.snapshot(teacher)
  work = tmp_path / "student"
  res = _train(work, prepared_data, overrides={"distill.teacher": str(teacher)})
  one_error(res, "FingerprintMismatchError")
  assert not work.exists(), sorted(p.name for p in work.iterdir())
  assert helpers.snapshot(teacher) == before


def test_unedited_resumes_and_warm_starts(trained, tmp_path, prepared_data):
  """The unedited checkpoint resumes and warm-starts on 1 device, another count than the save's
  (2 on a 2-core host). On the save's own split: test_faults.py::test_workdir_ownership (its
  own run) and test_arch_match.py::test_init_from_good_checkpoint_reproduces_val_loss_and_trains.
  """
  work = _copy(trained, tmp_path)
  res = _train(work, prepared_data, "--allow_config_change", overrides={"train_steps": STEP + 5},
               env=ONE)
  assert res.rc == 0, res.stderr[-3000:]
  assert helpers.checkpoint_meta(work, STEP + 5)["fingerprint"]["by"] == "save"
  warm = tmp_path / "warm"
  res = _train(warm, prepared_data, f"--init={trained}:{STEP}", env=ONE)
  assert res.rc == 0, res.stderr[-3000:]
  assert helpers.events(helpers.read_jsonl(warm / "metrics.jsonl"), "step0_check")
