"""End to end with the real commands: a checkpoint of the default experiment (tiny overrides)
exports through `pregate-export`, transformers reproduces its logits and greedy text,
the card states its gate verdict; the export comes back through `--init=hf:DIR`'s conversion
(train.hf.importer.init_from_hf), warm-starts `train.main` and passes the architecture and
step-0 checks; evaluate and inspect accept the imported checkpoint."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import helpers
import hf_helpers as hh
import shared_runs

pytestmark = pytest.mark.hf


torch = pytest.importorskip("torch")
STEPS = 20


@pytest.fixture(scope="module")
def trained(trained_tiny, tmp_path_factory) -> Path:
  return shared_runs.copy_of(trained_tiny, tmp_path_factory, "hf_run")


@pytest.fixture(scope="module")
def exported(trained) -> Path:
  out = trained.parent / "hf"
  proc = helpers.run_module("train.cli.export", f"--checkpoint={trained}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"step {STEPS} (LlamaForCausalLM" in proc.stdout, proc.stdout
  return out


def test_default_experiment_checkpoint_exports_with_its_verdict(trained, exported):
  from gates.chinchilla import ratio_text
  from train.infer.generate import generate
  from train.restore import load_for_eval
  restored = load_for_eval(str(trained))
  meta = restored.meta.to_json()  # the JSON the card was written from
  card = (exported / "README.md").read_text()
  for needle in ("**BYPASSED** with --force_under_provisioned",
                 f"effective D'/N = {meta['gate']['effective_ratio_text']} < 20 (planned D/N = "
                 + ratio_text(meta["gate"]["tokens"], meta["gate"]["n_params"]),
                 f"Parameters N = {meta['param_counts']['total']:,}",
                 f"Tokens seen D = {meta['tokens_seen']:,} at step {STEPS}",
                 f"{meta['val_loss']:.4f} nats/token",
                 f"{meta['val_loss'] / math.log(2):.4f} bits per token",
                 meta["data"]["source_sha256"], f"jax {meta['libraries']['jax']}",
                 f"pregate git commit: {meta['git_commit']}"):
    assert needle in card, f"{needle!r} not in card:\n{card}"
  model = hh.hf_load(exported)
  ids = restored.tokenizer.encode("ROMEO:\nWhat light through yonder window")
  diff = hh.per_position_diff(hh.hf_logits(model, ids), hh.pregate_logits(restored.model, ids))
  assert len(diff) >= 16 and diff.max() < hh.TOL, diff
  prompt = restored.tokenizer.decode(ids)
  theirs = model.generate(torch.tensor(ids[None].astype(np.int64)), max_new_tokens=20,
                          do_sample=False)[0, len(ids):].numpy()
  assert restored.tokenizer.decode(theirs) == generate(restored.model, restored.tokenizer,
                                                       prompt, 20, temperature=0)


def test_hf_init_warm_starts_and_passes_the_step0_check(exported, prepared_data, tmp_path):
  from train.hf.importer import init_from_hf
  work = tmp_path / "warm"
  init = init_from_hf(f"hf:{exported}", str(work))
  assert init == str(work / "hf_init")
  assert init_from_hf(f"hf:{exported}", str(work)) == init  # converted once, then reused
  r = helpers.run_main(helpers.FORCE, *helpers.tiny_flags(prepared_data, {"train_steps": 10}),
                       f"--init={init}", workdir=work)
  assert r.rc == 0, r.stderr[-3000:]
  check = helpers.events(helpers.read_jsonl(work / "metrics.jsonl"), "step0_check")
  assert len(check) == 1 and check[0]["abs_diff"] <= 1e-4 * check[0]["recorded"], check
  assert "step-0 check passed for --init=" in r.stderr
  changed = Path(shutil.copytree(exported, tmp_path / "changed"))
  other = tmp_path / "other"
  init_from_hf(f"hf:{changed}", str(other))
  with (changed / "model.safetensors").open("r+b") as f:
    f.seek(-4, 2)
    f.write(b"\x00\x00\x80\x3f")
  from core.errors import ConfigError
  with pytest.raises(ConfigError, match="differs from --init=hf:"):
    init_from_hf(f"hf:{changed}", str(other))


def test_imported_export_evaluates_and_inspects_like_the_original(trained, exported, tmp_path):
  from train.cli import inspect_ckpt as inspect
  from train.hf.importer import import_hf
  from train.infer.score import evaluate_checkpoint
  import_hf(str(exported), str(tmp_path / "imported"))
  result = evaluate_checkpoint(str(tmp_path / "imported"))
  assert result["step"] == STEPS and result["abs_diff"] < 1e-5, result
  original = json.loads(inspect.report(str(trained), as_json=True, with_quality=True))
  imported = json.loads(inspect.report(str(tmp_path / "imported"), as_json=True,
                                       with_quality=True))
  assert imported["quality"]["score"] == original["quality"]["score"], imported["quality"]
  assert imported["metadata"]["imported_from"]["pregate_export"] is True
