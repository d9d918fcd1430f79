"""pregate-prepare as a user runs it: a summary on success, one line and exit 2 on an empty file."""

import pytest

import helpers
from train.data import store

pytestmark = pytest.mark.e2e


SEP = "\n\n"
DOCS = [f"document {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13} times"
        for i in range(60)]
TEXT = SEP.join(DOCS)


def _corpus(tmp_path, text=TEXT, name="c.txt"):
  p = tmp_path / name
  p.write_text(text, encoding="utf-8")
  return p


def _cli(*args):
  return helpers.run_module("train.cli.prepare", *args, timeout=120)


def test_cli_empty_file_exits_2_with_one_line(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_bytes(b"")
  r = _cli(f"--input={empty}", f"--output_dir={tmp_path / 'out'}")
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("ERROR: ") and str(empty) in lines[0]
  assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_success_prints_summary(tmp_path):
  out = tmp_path / "out"
  r = _cli(f"--input={_corpus(tmp_path)}", f"--output_dir={out}", "--tokenizer=byte",
           "--val_fraction=0.2", "--txt_separator=\\n\\n")
  assert r.returncode == 0, r.stderr
  m = store.load_manifest(str(out))
  assert m["tokenizer"] == {"type": "byte", "eot": "<|endoftext|>"}
  assert m["val_fraction"] == 0.2 and m["documents"] == len(DOCS)
  assert f"{m['train_tokens']:,}" in r.stdout and "byte" in r.stdout
