"""Documents end to end: validation documents never reach a training window, a separately
prepared validation set still works (`val_dir`), a killed preparation never leaves a manifest
claiming a complete dataset, and long preparations show progress with tokens/s and ETA."""
import io
import json
import os
import signal
import time

import pytest

import helpers
from core.progress import Progress
from train.data import pipeline, prepare, store
from train.data import tokenizer as tk

pytestmark = pytest.mark.e2e


DOCS = [f"<doc{i:04d}> " + " ".join(f"word{(i * 31 + j) % 211}" for j in range(40))
        for i in range(400)]


def _jsonl(path, docs):
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
  return path


def test_validation_documents_never_appear_in_training_windows(tmp_path):
  m = prepare.prepare(str(_jsonl(tmp_path / "c.jsonl", DOCS)), str(tmp_path / "d"), "byte",
                      0.15)
  tok = tk.tokenizer_from_json(m["tokenizer"])
  val = pipeline.open_split(str(tmp_path / "d"), "val")
  val_ids = {t[:9] for t in tok.decode(val.read()).split("<|endoftext|>") if t}
  assert len(val_ids) == m["val_documents"] > 20
  train = pipeline.open_split(str(tmp_path / "d"), "train")
  src = pipeline.BatchSource(train, global_batch=64, seq_len=64, seed=0, num_batches=200)
  seen = set()
  for i in range(200):
    for row in src[i]["inputs"]:
      text = tok.decode(row)
      seen.update(text[k:k + 9] for k in range(len(text)) if text.startswith("<doc", k))
  assert len(seen) > 100 and not seen & val_ids


def test_separately_prepared_val_dir_is_what_a_run_evaluates(tmp_path):
  from models.config import ModelConfig
  from train.run.setup import open_data
  corpus = _jsonl(tmp_path / "c.jsonl", DOCS)
  held = _jsonl(tmp_path / "held.jsonl", [d.upper() for d in DOCS[:50]])
  prepare.prepare(str(corpus), str(tmp_path / "train_dir"), "byte", 0.1)
  vm = prepare.prepare(str(held), str(tmp_path / "val_dir"), "byte", 0.5)
  config = helpers.tiny_config(None, {
      "data.data_dir": str(tmp_path / "train_dir"), "data.val_dir": str(tmp_path / "val_dir"),
      "data.corpus": str(corpus), "data.tokenizer": "byte", "data.eot_token": "<|endoftext|>",
      "data.val_split": "documents", "data.workers": 1, "model.vocab_size": 257})
  data = open_data(config, str(tmp_path / "run"), ModelConfig.from_dict(config.model.to_dict()))
  assert data.val.path == str(tmp_path / "val_dir" / "val")
  assert data.val.known_sha256 == vm["val_sha256"]
  assert data.sources["corpus"]["unique_tokens"] == data.manifest["train_tokens"]


def test_killed_prepare_never_leaves_a_complete_looking_dir(tmp_path):
  docs = [d + " " + "filler text " * 30 for d in DOCS] * 12
  corpus = _jsonl(tmp_path / "c.jsonl", docs)
  out = tmp_path / "out"
  old = prepare.prepare(str(_jsonl(tmp_path / "old.jsonl", DOCS)), str(out), "byte", 0.1)
  before = helpers.snapshot(out)
  proc = helpers.spawn(["-m", "train.cli.prepare", f"--input={corpus}", f"--output_dir={out}",
                        "--tokenizer=char", "--workers=1"], tmp_path / "prepare.log")
  deadline = time.time() + 120
  while not list(tmp_path.glob(".out.tmp-*/train")) and time.time() < deadline:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  stale = list(tmp_path.glob(".out.tmp-*"))
  assert stale, "the child finished before it could be killed mid-write"
  assert not any((s / store.MANIFEST).exists() for s in stale)
  assert helpers.snapshot(out) == before and store.load_manifest(str(out)) == old
  new = prepare.prepare(str(corpus), str(out), "char", 0.1)  # the next run completes...
  assert store.load_manifest(str(out)) == new and new["documents"] == len(docs)
  assert not list(tmp_path.glob(".out.tmp-*"))  # ...and reclaims the dead run's temp dir


def test_progress_bar_on_a_terminal_plain_lines_otherwise(caplog):
  tty = helpers.Tty()
  bar = Progress("tokenizing", 10_000_000, unit="char", stream=tty, every_s=0.0)
  bar.update(2_500_000, 1_000_000)
  bar.update(2_500_000, 1_000_000)
  bar.close()
  out = tty.getvalue()
  assert "tokenizing" in out and "tok/s" in out and "5.00M/10.0M" in out
  plain = Progress("tokenizing", 10_000_000, unit="char", stream=io.StringIO(), every_s=0.0)
  with caplog.at_level("INFO"):
    plain.update(5_000_000, 2_000_000)
  line = plain.line()
  assert line.startswith("tokenizing: 50% (5.0 of 10.0 Mchar), 2,000,000 tokens")
  assert "tokens/s" in line and "ETA" in line
  assert any("tokenizing: 50%" in r.getMessage() for r in caplog.records)
