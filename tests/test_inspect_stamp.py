"""`pregate-inspect` and `pregate-stamp` on a real checkpoint from a tiny training run: inspect
tells what a checkpoint claims and how far to trust it; stamp repairs missing or wrong metadata only
when the config provably matches the stored tensors, and never touches anything otherwise."""
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import helpers

pytestmark = pytest.mark.e2e


OVERRIDES = helpers.tiny_flags(None, {"train_steps": 20})  # trained_tiny's flags
CONFIG = "--config=configs/shakespeare_char.py"
TENSORS = ("embed", "blocks/0/attn/wq/kernel", "blocks/0/mlp/w_up/kernel", "final_norm/scale")


@pytest.fixture(scope="module")
def trained(trained_tiny) -> Path:
  """The shared 20-step tiny run (saves at steps 10 and 20), read only here."""
  return trained_tiny


@pytest.fixture
def copy(trained, tmp_path) -> Path:
  """A private copy of the run for a test that changes it."""
  return Path(shutil.copytree(trained, tmp_path / "run"))


def _cli(module: str, *args: str) -> helpers.Result:
  return helpers.command(module, *args, timeout=120)


def _one_error_line(res: helpers.Result, *needles: str) -> str:
  assert res.rc == 2, res.stdout + res.stderr
  assert "Traceback" not in res.stderr
  assert len(res.error_lines) == 1 and res.error_lines[0].startswith("ERROR:"), res.stderr
  for needle in needles:
    assert needle in res.error_lines[0], f"{needle!r} not in {res.error_lines[0]}"
  return res.error_lines[0]


def _meta_path(workdir: Path, step: int = 20) -> Path:
  return workdir / "checkpoints" / str(step) / "meta" / "metadata"


def _edit_meta(workdir: Path, edit) -> None:
  meta = json.loads(_meta_path(workdir).read_text())
  edit(meta)
  _meta_path(workdir).write_text(json.dumps(meta))


def _quality(workdir: Path) -> dict:
  from train.cli import inspect_ckpt as inspect
  return json.loads(inspect.report(str(workdir), as_json=True, with_quality=True))["quality"]


def _reasons(q: dict, sub: str) -> str:
  return " | ".join(x["reason"] for x in q["subscores"][sub]["lost"])


def _config(*extra: str):
  """The ConfigDict the CLI builds from CONFIG plus OVERRIDES and `extra` flags."""
  from configs import shakespeare_char
  config = shakespeare_char.get_config()
  for flag in (*OVERRIDES, *extra):
    *parents, leaf = flag.removeprefix("--config.").split("=")[0].split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(flag.split("=", 1)[1])
  return config


def _params(workdir: Path) -> dict:
  from flax import nnx

  from train.restore import load_for_eval
  restored = load_for_eval(str(workdir))
  return {k: np.asarray(v) for k, v in helpers.flat(nnx.state(restored.model, nnx.Param)).items()}


def test_inspect_prints_summary_and_json_round_trips(trained):
  from train.cli import inspect_ckpt as inspect
  res = _cli("train.cli.inspect_ckpt", trained)
  assert res.rc == 0, res.stderr
  meta = json.loads(_meta_path(trained).read_text())
  for needle in ("schema        pregate.checkpoint/v1", "hf_class=LlamaForCausalLM",
                 "d_model=32", "total=11,392", "type=char, vocab_size=65", "source_sha256=",
                 "step=20", "tokens_seen=2,560, planned_tokens=2,560", "n_batches=2",
                 "bypassed=True; BYPASSED", f"mesh at save  data={meta['mesh']['data']}, fsdp=1",
                 f"jax={jax.__version__}",
                 f"val_loss={meta['val_loss']:.6g}", str(meta["git_commit"])):
    assert needle in res.stdout, f"{needle!r} not in:\n{res.stdout}"
  as_json = inspect.report(str(trained / "checkpoints" / "10"), as_json=True)
  assert json.loads(as_json) == json.loads(_meta_path(trained, 10).read_text())


def _git_loss(workdir: Path) -> list[str]:
  """Outside a git checkout a run records no commit: the one point a fresh run may lose."""
  return [] if json.loads(_meta_path(workdir).read_text())["git_commit"] else [
      "git_commit is None"]


def test_quality_of_a_fresh_checkpoint_is_full(trained):
  from train.cli import inspect_ckpt as inspect
  q = _quality(trained)
  lost = [x["reason"] for s in q["subscores"].values() for x in s["lost"]]
  assert lost == _git_loss(trained), lost
  assert q["score"] == 100 - 2 * len(_git_loss(trained))
  text = inspect.report(str(trained), step="best", with_quality=True)
  assert f"quality       {q['score']}/100" in text, text


def test_quality_of_a_stripped_checkpoint_explains_each_lost_point(copy):
  from train.cli import inspect_ckpt as inspect
  _edit_meta(copy, lambda m: [m.pop("tokenizer"), m.pop("data")])
  text = inspect.report(str(copy), with_quality=True)
  assert "-5 no tokenizer embedded" in text and "-13 no data fingerprint" in text, text
  q = _quality(copy)
  assert q["subscores"]["tokenizer"]["score"] == q["subscores"]["data_provenance"]["score"] == 0
  others = [x["reason"] for name, s in q["subscores"].items() for x in s["lost"]
            if name not in ("tokenizer", "data_provenance")]
  assert others == _git_loss(copy), others
  for sub in q["subscores"].values():
    assert sub["max"] - sub["score"] == sum(x["points"] for x in sub["lost"])
    assert all(x["reason"] for x in sub["lost"])


def test_no_metadata_scores_zero_and_points_to_stamp(copy):
  from gates.arch_match import MissingMetadataError
  from train.cli import inspect_ckpt as inspect
  os.remove(_meta_path(copy))
  res = _cli("train.cli.inspect_ckpt", copy, "--quality")
  assert res.rc == 0, res.stderr
  assert "quality       0/100" in res.stdout and "pregate-stamp" in res.stdout
  assert all(s["score"] == 0 for s in _quality(copy)["subscores"].values())
  with pytest.raises(MissingMetadataError, match="pregate-stamp") as e:
    inspect.report(str(copy), as_json=True)
  assert e.value.exit_code == 2


def test_masquerade_loses_signature_points(copy):
  _edit_meta(copy, lambda m: m["model"].update(d_model=64))
  q = _quality(copy)
  sig = q["subscores"]["signature"]
  assert sig["score"] == 8, sig
  for tensor in TENSORS:
    assert f"tensor {tensor}: expected float32[" in _reasons(q, "signature")
  assert "config.model differs from model" in _reasons(q, "training_provenance")


def test_damaged_checkpoints_are_one_line_errors(copy):
  from core.errors import CheckpointError
  from train.cli import inspect_ckpt as inspect
  _meta_path(copy).write_text('{"schema": "pregate.checkpoint/v1", "mod')
  _one_error_line(_cli("train.cli.inspect_ckpt", copy, "--quality"), "CheckpointError",
                  "unreadable metadata")
  with pytest.raises(CheckpointError, match=r"step '99' not found.*available: \[10, 20\]") as e:
    inspect.report(str(copy), step="99")
  assert e.value.exit_code == 2


def test_stamp_repairs_deleted_metadata_and_the_checkpoint_loads(trained, copy):
  os.remove(_meta_path(copy))
  res = _cli("train.cli.stamp", copy, CONFIG, *OVERRIDES)
  assert res.rc == 0, res.stdout + res.stderr
  assert "(new file)" in res.stdout and "left null" in res.stdout
  meta = json.loads(_meta_path(copy).read_text())
  assert meta["stamped"]["replaced_existing"] is False and meta["val_loss"] is None
  original, repaired = _params(trained), _params(copy)
  assert original.keys() == repaired.keys()
  for name, value in original.items():
    np.testing.assert_array_equal(repaired[name], value, err_msg=name)
  q = _quality(copy)
  assert q["subscores"]["signature"]["score"] == 20 and q["subscores"]["tokenizer"]["score"] == 15
  assert "tokens_seen is None" in _reasons(q, "training_provenance")


def test_stamp_recreates_a_missing_meta_dir(copy):
  from train.ckpt import stamp
  from train.restore import load_for_eval
  shutil.rmtree(_meta_path(copy, 10).parent)
  stamp.stamp(str(copy / "checkpoints" / "10"), _config())
  assert load_for_eval(str(copy), step=10).step == 10


def test_stamp_with_a_wrong_config_refuses_and_changes_nothing(copy):
  os.remove(_meta_path(copy))
  before = helpers.snapshot(copy)
  res = _cli("train.cli.stamp", copy, CONFIG, *OVERRIDES, "--config.model.d_model=64")
  line = _one_error_line(res, "ArchitectureMismatchError", *TENSORS)
  assert "11 difference(s)" in line
  assert helpers.snapshot(copy) == before


def test_stamp_over_wrong_metadata_keeps_a_backup(copy):
  from gates.arch_match import ArchitectureMismatchError
  from train.ckpt import stamp
  from train.restore import load_for_eval
  _edit_meta(copy, lambda m: m["model"].update(d_model=64))
  masquerade = _meta_path(copy).read_bytes()
  with pytest.raises(ArchitectureMismatchError):
    load_for_eval(str(copy))
  lines = stamp.stamp(str(copy), _config())
  backups = list(_meta_path(copy).parent.glob("metadata.bak-*"))
  assert len(backups) == 1 and backups[0].read_bytes() == masquerade
  assert not list(_meta_path(copy).parent.glob("metadata.tmp-*"))
  assert any("disagreed with the tensors: model.d_model: expected 32 found 64" in line
             for line in lines), lines
  assert json.loads(_meta_path(copy).read_text())["stamped"]["replaced_existing"] is True
  assert load_for_eval(str(copy)).step == 20
