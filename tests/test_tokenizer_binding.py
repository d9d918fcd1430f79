"""Issue 21 item 6: the tokenizer is part of what a restore proves.

One tiny saved checkpoint (module fixture) is copied and its embedded tokenizer edited:
- `inconsistent`: one symbol replaced, the data record's tokenizer fingerprint left as saved;
- `rewritten`: the same edit with the recorded fingerprint rewritten to match;
- `rewritten_text`: a symbol replaced so that every later id shifts, the fingerprint and the
  probe text rewritten to match (the probe text encodes, but to other ids).
Every load path (resume, warm start, load_for_eval, eval, export and a teacher in-process;
pregate-eval, pregate-sample and a distillation run as commands) refuses each with one line and
writes nothing; the unedited copy loads; one saved before the probe existed loads with a
one-line warning.
"""
from __future__ import annotations

import json
import logging
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
from train.ckpt import resume
from train.ckpt.restore import default_mesh
from train.data.tokenizer import tokenizer_from_json
from train.hf import export as export_lib
from train.infer import score
from train.restore import load_for_eval
from train.run import teacher as teacher_lib
from train.state import setup as run_state
from train.state import sharding
from train.state import step as step_lib

pytestmark = pytest.mark.e2e

STEP = 20
EDITS = ("inconsistent", "rewritten", "rewritten_text")


@pytest.fixture(scope="module")
def trained(trained_tiny, tmp_path_factory) -> Path:
  return shared_runs.copy_of(trained_tiny, tmp_path_factory, "tokbind")


def _meta_path(work: Path) -> Path:
  return work / "checkpoints" / str(STEP) / "meta" / "metadata"


def _copy(trained: Path, tmp_path: Path, edit: str | None = None) -> Path:
  """A copy of the run; `edit` changes its embedded tokenizer as the module docstring says."""
  work = Path(shutil.copytree(trained, tmp_path / f"run-{edit}"))
  if edit is None:
    return work
  meta = json.loads(_meta_path(work).read_text())
  vocab, probe = meta["tokenizer"]["vocab"], meta["fingerprint"]["tokenizer_probe"]
  # A symbol the probe text holds leaves, 'é' joins at the end (the vocabulary stays sorted,
  # its size the same): every id after the symbol's shifts.
  gone = next(c for c in probe["text"] if c != vocab[-1])
  meta["tokenizer"]["vocab"] = vocab.replace(gone, "") + "\u00e9"
  if edit == "rewritten_text":  # and the probe text says 'é' where it said the symbol
    probe["text"] = probe["text"].replace(gone, "\u00e9")
  if edit != "inconsistent":
    meta["data"]["tokenizer_fingerprint"] = tokenizer_from_json(meta["tokenizer"]).fingerprint()
  _meta_path(work).write_text(json.dumps(meta))
  return work


def _model(work: Path) -> ModelConfig:
  return ModelConfig.from_dict(helpers.checkpoint_meta(work, STEP)["model"])


def _setup(work: Path) -> run_state.TrainSetup:
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  return run_state.TrainSetup.build(_model(work), _tx(), 0, mesh)


def _tx():
  return step_lib.make_optimizer(helpers.tiny_config(None))


def _embedded(work: Path) -> dict:
  """The tokenizer the checkpoint embeds (as edited): a run whose data agrees with it, so only
  the binding can refuse."""
  return helpers.checkpoint_meta(work, STEP)["tokenizer"]


def _resume(work: Path):
  ckpt = ckpt_lib.Checkpointer(str(work / "checkpoints"))
  try:
    return resume.restore_or_init(_setup(work), ckpt, None, _embedded(work))
  finally:
    ckpt.close()


def _init(work: Path):
  setup, spec = _setup(work), f"{work}:{STEP}"
  return resume.warm_state(setup, resume.init_params(setup, spec), spec, _embedded(work), _tx())


def _teacher(work: Path, prepared_data: str):
  config = helpers.tiny_config(prepared_data, {"distill.teacher": str(work)})
  return teacher_lib.load(config, _model(work), str(work.parent / "student"),
                          tokenizer_from_json(_embedded(work)), default_mesh())


PATHS = {
    "resume": lambda w, d: _resume(w),
    "init": lambda w, d: _init(w),
    "load_for_eval": lambda w, d: load_for_eval(str(w), STEP),
    "eval": lambda w, d: score.evaluate_checkpoint(str(w), STEP),
    "export": lambda w, d: export_lib.export(str(w), str(w.parent / "export"), step=STEP),
    "teacher": _teacher,
}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("edit", EDITS)
def test_edited_tokenizer_refused_in_process(trained, tmp_path, prepared_data, edit, path):
  work = _copy(trained, tmp_path, edit)
  before = helpers.snapshot(tmp_path)
  with pytest.raises(arch_match.FingerprintMismatchError) as e:
    PATHS[path](work, prepared_data)
  line = str(e.value)
  assert "\n" not in line and "embedded tokenizer" in line, line
  assert helpers.snapshot(tmp_path) == before  # nothing written, not even an export dir


def test_unedited_loads_on_every_path(trained, tmp_path, prepared_data, caplog):
  work = _copy(trained, tmp_path)
  with caplog.at_level(logging.WARNING):
    for load in PATHS.values():
      load(work, prepared_data)
  assert "tokenizer probe" not in caplog.text and (tmp_path / "export").is_dir()


def test_checkpoint_without_probe_loads_with_one_warning(trained, tmp_path, caplog):
  work = _copy(trained, tmp_path)
  meta = json.loads(_meta_path(work).read_text())
  del meta["fingerprint"]["tokenizer_probe"]
  _meta_path(work).write_text(json.dumps(meta))
  with caplog.at_level(logging.WARNING):
    load_for_eval(str(work), STEP)
  lines = [r.getMessage() for r in caplog.records if "tokenizer probe" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0], caplog.text


@pytest.mark.parametrize("module,edit", [("train.cli.evaluate", "inconsistent"),
                                         ("train.cli.sample", "rewritten_text")])
def test_edited_tokenizer_refused_by_commands(trained, tmp_path, module, edit):
  work = _copy(trained, tmp_path, edit)
  before = helpers.snapshot(work)
  res = helpers.command(module, f"--checkpoint={work}", f"--step={STEP}",
             "--max_new_tokens=4" if module.endswith("sample") else "--batches=1")
  one_error(res, "TokenizerMismatchError", "embedded tokenizer")
  assert helpers.snapshot(work) == before


def test_distillation_run_refuses_an_edited_teacher(trained, tmp_path, prepared_data):
  """As a command, the student's prepared data holds the original tokenizer, so the preflight's
  comparison refuses first (in-process, `teacher` above shows the binding refusing)."""
  teacher = _copy(trained, tmp_path, "rewritten")
  before = helpers.snapshot(teacher)
  student = tmp_path / "student"
  res = helpers.run_main(helpers.FORCE, *helpers.tiny_flags(
      prepared_data, {"distill.teacher": str(teacher)}), workdir=student)
  one_error(res, "TeacherError", "tokenizer")
  assert helpers.snapshot(teacher) == before and not student.exists()
