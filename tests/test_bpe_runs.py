"""A BPE tokenizer through real runs: its tokenizer.json survives a checkpoint, and training it is
deterministic within and across processes."""
import json
import subprocess
import sys

import pytest
from test_bpe_tokenizer import EOT, SHAKESPEARE_DOCS

import helpers
from train.data import bpe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained():
  return bpe.train(iter(SHAKESPEARE_DOCS), 600, EOT, ["<pad>"])


def test_training_is_deterministic_in_and_across_processes(trained):
  again = bpe.train(iter(SHAKESPEARE_DOCS), 600, EOT, ["<pad>"])
  assert again.to_json() == trained.to_json() and again.fingerprint() == trained.fingerprint()
  program = ("import helpers; from train.data import bpe; "
             "d=[x for x in helpers.CORPUS.read_text('utf-8').split('\\n\\n') if x]; "
             "print(bpe.train(iter(d), 600, '<|endoftext|>', ['<pad>']).fingerprint())")
  out = subprocess.run([sys.executable, "-c", program], cwd=helpers.REPO,
                       env={**helpers.child_env(), "PYTHONPATH": f"{helpers.REPO}:"
                            f"{helpers.REPO / 'tests'}"},
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split()[-1] == trained.fingerprint()


def test_tokenizer_json_round_trips_through_a_checkpoint(trained, tmp_path):
  from train.infer import score
  from train.infer.generate import generate
  from train.restore import load_for_eval
  path = tmp_path / "tokenizer.json"
  trained.hf.save(str(path))
  workdir = tmp_path / "run"
  res = helpers.run_main(*helpers.tiny_flags(None, {
      "data.tokenizer": "bpe", "data.tokenizer_json": str(path), "data.eot_token": EOT,
      "data.val_split": "documents", "data.txt_separator": "\n\n", "data.workers": 1,
      "model.vocab_size": 600, "train_steps": 20}), helpers.FORCE, workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  restored = load_for_eval(str(workdir))
  assert restored.tokenizer == trained
  assert restored.tokenizer.to_json()["tokenizer"] == json.loads(path.read_text())
  assert restored.meta.data_sources["corpus"]["unique_tokens"] > 0
  text = generate(restored.model, restored.tokenizer, "ROMEO:", 10, temperature=0)
  assert isinstance(text, str)
  result = score.evaluate_checkpoint(str(workdir))
  assert result["abs_diff"] < 1e-4 and result["val_bpb"] == result["bits_per_byte"] > 0
  evals = helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "eval")
  assert evals[-1]["val_bpb"] == pytest.approx(result["val_bpb"], rel=1e-4)

