"""INV-INIT-ARCH-MATCH-001: every load path proves the architecture before reading an array.

One tiny real checkpoint is trained per module; each case builds the configured model that
differs from it in one field and loads through the real code of each path: resume
(`resume.restore_or_init`, what the loop calls), warm start (`resume.init_params` then
`resume.warm_state`, what
`--init` calls) and `load_for_eval(expected=...)`. End-to-end subprocess runs prove the CLI
wiring: a refused load exits 2 before any train step.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import helpers
import shared_runs
from gates.arch_match import (
  ArchitectureMismatchError,
  InitEvalMismatchError,
  MissingMetadataError,
  check_init_eval,
)
from models.config import ModelConfig
from train.ckpt import checkpointer as ckpt_lib
from train.ckpt import resume
from train.ckpt.metadata import Metadata
from train.restore import load_for_eval
from train.state import setup as run_state
from train.state import sharding
from train.state import step as step_lib

pytestmark = pytest.mark.e2e


STEP = 20
BASE = dict(vocab_size=65, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
            max_seq_len=128, rope_theta=10000.0, tie_embeddings=True, dtype="float32",
            param_dtype="float32")
# field -> a value that differs from BASE (with any companion change it needs to be valid).
FIELDS = {
    "vocab_size": {"vocab_size": 66}, "d_model": {"d_model": 64}, "n_layers": {"n_layers": 2},
    "n_heads": {"n_heads": 4}, "n_kv_heads": {"n_kv_heads": 2}, "d_ff": {"d_ff": 96},
    "tie_embeddings": {"tie_embeddings": False}, "rope_theta": {"rope_theta": 500000.0},
    "max_seq_len": {"max_seq_len": 256}, "param_dtype": {"param_dtype": "bfloat16"},
    "family": {"family": "qwen2", "qkv_bias": True},
}


@pytest.fixture(scope="module")
def trained(trained_tiny, tmp_path_factory) -> Path:
  return shared_runs.copy_of(trained_tiny, tmp_path_factory, "arch")


@pytest.fixture
def copy(trained, tmp_path) -> Path:
  dst = tmp_path / "run"
  shutil.copytree(trained, dst)
  return dst


def _init_from(setup, spec: str, tokenizer: dict | None, tx: optax.GradientTransformation):
  """A warm start as the loop runs it: `init_params` before the data, `warm_state` after."""
  warm = resume.init_params(setup, spec)
  return resume.warm_state(setup, warm, spec, tokenizer, tx), warm[1]


def _setup(**changes) -> run_state.TrainSetup:
  cfg = ModelConfig(**{**BASE, **changes})
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  return run_state.TrainSetup.build(cfg, _tx(), 0, mesh)


def _tx() -> optax.GradientTransformation:
  return step_lib.make_optimizer(helpers.tiny_config(None))


def _tokenizer(work: Path) -> dict:
  return helpers.checkpoint_meta(work, STEP)["tokenizer"]


def _resume(work: Path, setup: run_state.TrainSetup, tokenizer: dict | None = None):
  ckpt = ckpt_lib.Checkpointer(str(work / "checkpoints"), read_only=True)
  try:
    return resume.restore_or_init(setup, ckpt, None, tokenizer or _tokenizer(work))
  finally:
    ckpt.close()


def _names_field(err: Exception, field: str) -> None:
  assert f"model.{field}" in str(err), str(err)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_field_mismatch_refused_on_resume(trained, field):
  with pytest.raises(ArchitectureMismatchError) as e:
    _resume(trained, _setup(**FIELDS[field]))
  _names_field(e.value, field)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_field_mismatch_refused_on_init(trained, field):
  setup = _setup(**FIELDS[field])
  with pytest.raises(ArchitectureMismatchError) as e:
    _init_from(setup, f"{trained}:{STEP}", _tokenizer(trained), _tx())
  _names_field(e.value, field)


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_field_mismatch_refused_by_load_for_eval(trained, field):
  with pytest.raises(ArchitectureMismatchError) as e:
    load_for_eval(str(trained), STEP, expected=ModelConfig(**{**BASE, **FIELDS[field]}))
  _names_field(e.value, field)


def test_matching_config_loads_on_every_path(trained):
  state, meta = _resume(trained, _setup())
  assert int(state.step) == STEP and meta.step == STEP
  fresh, _ = _init_from(_setup(), str(trained), _tokenizer(trained), _tx())
  assert int(fresh.step) == 0
  got = load_for_eval(str(trained), "latest", expected=ModelConfig(**BASE))
  want = helpers.flat(helpers.load_params(trained, STEP))
  for path, leaf in helpers.flat(jax.tree.map(np.asarray, state.params)).items():
    np.testing.assert_array_equal(leaf, want[path])
  assert got.step == STEP and got.tokenizer.vocab_size == 65


def _edit_meta(work: Path, **model_changes) -> None:
  path = work / "checkpoints" / str(STEP) / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["model"].update(model_changes)
  path.write_text(json.dumps(meta))


def test_masquerade_refused_on_every_path(copy):
  """Metadata claims d_model=64 (and the config agrees) but the tensors are d_model=32."""
  _edit_meta(copy, d_model=64)
  setup = _setup(d_model=64)
  for load in (lambda: _resume(copy, setup),
               lambda: _init_from(setup, str(copy), _tokenizer(copy), _tx()),
               lambda: load_for_eval(str(copy), STEP),
               lambda: load_for_eval(str(copy), STEP,
                                             expected=ModelConfig(**{**BASE, "d_model": 64}))):
    with pytest.raises(ArchitectureMismatchError) as e:
      load()
    assert "tensor embed: expected float32[65, 64] found float32[65, 32]" in str(e.value)


def test_metadata_from_before_family_existed_loads_as_llama(copy):
  """Checkpoints written before model.family/qkv_bias describe a bias-free Llama (ARCH_DEFAULTS);
  a Qwen2 config is still refused for them, by the fields and by the missing bias tensors."""
  path = copy / "checkpoints" / str(STEP) / "meta" / "metadata"
  meta = json.loads(path.read_text())
  for key in ("family", "qkv_bias"):
    meta["model"].pop(key)
  path.write_text(json.dumps(meta))
  got = load_for_eval(str(copy), STEP, expected=ModelConfig(**BASE))
  assert got.model.cfg.family == "llama" and not got.model.cfg.qkv_bias
  with pytest.raises(ArchitectureMismatchError) as e:
    _init_from(_setup(family="qwen2", qkv_bias=True), str(copy), _tokenizer(copy), _tx())
  assert "model.family: expected 'qwen2' found 'llama'" in str(e.value)
  assert "tensor blocks/0/attn/wq/bias: expected float32[32] found <missing>" in str(e.value)


def test_dtype_mismatch_refused(copy):
  """fp32 tensors never load as bf16 params, even when the metadata is edited to agree."""
  with pytest.raises(ArchitectureMismatchError, match="model.param_dtype"):
    _resume(copy, _setup(param_dtype="bfloat16"))
  _edit_meta(copy, param_dtype="bfloat16")
  with pytest.raises(ArchitectureMismatchError) as e:
    _resume(copy, _setup(param_dtype="bfloat16"))
  assert "expected bfloat16[65, 32] found float32[65, 32]" in str(e.value)


def test_tokenizer_mismatch_refused(trained):
  with pytest.raises(ArchitectureMismatchError, match="tokenizer"):
    _resume(trained, _setup(), tokenizer={"type": "byte"})
  other = dict(_tokenizer(trained))
  other["vocab"] = other["vocab"][::-1]
  with pytest.raises(ArchitectureMismatchError, match="tokenizer"):
    _init_from(_setup(), str(trained), other, _tx())


def test_missing_metadata_refused(copy):
  tokenizer = _tokenizer(copy)
  (copy / "checkpoints" / str(STEP) / "meta" / "metadata").unlink()
  for load in (lambda: _resume(copy, _setup(), tokenizer),
               lambda: _init_from(_setup(), str(copy), None, _tx()),
               lambda: load_for_eval(str(copy), STEP)):
    with pytest.raises(MissingMetadataError, match="pregate-stamp"):
      load()


def test_cli_resume_with_other_architecture_exits_before_training(copy, prepared_data):
  before = helpers.events(helpers.read_jsonl(copy / "metrics.jsonl"), "train")
  steps_before = helpers.checkpoint_steps(copy)
  flags = (helpers.FORCE, *helpers.tiny_flags(prepared_data, {"model.d_ff": 96}))
  r = helpers.run_main(*flags, workdir=copy)  # The workdir's owner record refuses first.
  assert r.rc == 2 and "WorkdirOwnershipError" in r.stderr and "model.d_ff" in r.stderr
  (copy / "run.json").unlink()  # Without it, the checkpoint's own metadata still refuses.
  r = helpers.run_main(*flags, workdir=copy)
  assert r.rc == 2, r.stderr[-2000:]
  assert "ArchitectureMismatchError" in r.stderr and "model.d_ff" in r.stderr
  assert "Traceback" not in r.stderr
  assert helpers.events(helpers.read_jsonl(copy / "metrics.jsonl"), "train") == before
  assert helpers.checkpoint_steps(copy) == steps_before


def _tamper(src: Path, dst: Path, keep_fingerprint: bool = False) -> None:
  """A copy whose `embed` tensor was scaled by 1.5 after save; metadata unchanged, except that
  the fingerprint is dropped unless kept (as from an older pregate: the step-0 check is then
  what stops it)."""
  params = helpers.load_params(src, STEP)
  params["embed"] = params["embed"] * 1.5
  meta = helpers.checkpoint_meta(src, STEP)
  if not keep_fingerprint:
    del meta["fingerprint"]
  ckpt = ckpt_lib.Checkpointer(str(dst / "checkpoints"), keep=1, keep_best=0, async_save=False)
  ckpt.save(STEP, params, {"unused": np.zeros(1)}, None, Metadata.from_json(meta),
            meta["val_loss"])
  ckpt.close()


def test_init_from_good_checkpoint_reproduces_val_loss_and_trains(trained, tmp_path,
                                                                   prepared_data):
  work = tmp_path / "warm"
  r = helpers.run_main(helpers.FORCE, f"--init={trained}:{STEP}",
                       *helpers.tiny_flags(prepared_data), workdir=work)
  assert r.rc == 0, r.stderr[-3000:]
  records = helpers.read_jsonl(work / "metrics.jsonl")
  check = helpers.events(records, "step0_check")
  assert len(check) == 1 and check[0]["abs_diff"] <= 1e-4 * check[0]["recorded"]
  assert helpers.events(records, "train")


def test_tampered_params_stopped_at_step0(trained, tmp_path, prepared_data):
  bad = tmp_path / "tampered"
  _tamper(trained, bad)
  work = tmp_path / "warm"
  r = helpers.run_main(helpers.FORCE, f"--init={bad}", *helpers.tiny_flags(prepared_data),
                       workdir=work)
  assert r.rc == 2, r.stderr[-3000:]
  assert "InitEvalMismatchError" in r.stderr and "Traceback" not in r.stderr
  assert not (work / "metrics.jsonl").exists() and not (work / "run.json").exists()
  kept = tmp_path / "tampered-fingerprinted"
  _tamper(trained, kept, keep_fingerprint=True)  # the fingerprint stops it even earlier
  r = helpers.run_main(helpers.FORCE, f"--init={kept}", *helpers.tiny_flags(prepared_data),
                       workdir=tmp_path / "warm2")
  assert r.rc == 2 and "FingerprintMismatchError" in r.stderr, r.stderr[-3000:]
  assert not (tmp_path / "warm2").exists()
  with pytest.raises(InitEvalMismatchError):
    check_init_eval("x", 1.5, 1.5 * (1 + 2e-4), "float32")
  assert check_init_eval("x", 1.5, 1.5 * (1 + 5e-5), "float32") < 1e-4
