"""Every bad corpus input is one `DataError` line naming the problem and the fix, and leaves an
existing prepared dir exactly as it was; through `train.main` the refusal comes before any XLA
compile and leaves the workdir untouched."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import helpers
from core.errors import DataError
from train.data import datasets, prepare
from train.data import spec as spec_lib

pytestmark = pytest.mark.e2e


DOCS = [f"document number {i} with a few words" for i in range(40)]
GOOD = {"tokenizer": "byte", "val_fraction": 0.2, "workers": 1, "corpus": ""}


def _write(root):
  """The bad inputs of the issue's list, each a file (or spec) in `root`."""
  root.mkdir(exist_ok=True)
  (root / "good.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
  (root / "empty.txt").write_bytes(b"")
  (root / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
  (root / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
  (root / "notjson.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
  (root / "nofield.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
  pq.write_table(pa.table({"body": DOCS}), root / "nocolumn.parquet")
  (root / "tokenizer.json").write_text('{"model": {"type": "BPE", ')
  return root


ROWS = {  # id: (data section overrides, model vocab, words the line must contain)
    "empty_file": ({"corpus": "{r}/empty.txt"}, 256, ["empty.txt", "empty (0 bytes)"]),
    "undecodable_txt": ({"corpus": "{r}/latin1.txt"}, 256, ["latin1.txt", "not valid UTF-8"]),
    "undecodable_jsonl": ({"corpus": "{r}/latin1.jsonl"}, 256, ["latin1.jsonl:1", "UTF-8"]),
    "jsonl_line_not_json": ({"corpus": "{r}/notjson.jsonl"}, 256,
                            ["notjson.jsonl:2", "not a JSON object"]),
    "jsonl_line_lacks_field": ({"corpus": "{r}/nofield.jsonl"}, 256,
                               ["nofield.jsonl:2", "no 'text' field", "data.text_field"]),
    "parquet_without_column": ({"corpus": "{r}/nocolumn.parquet"}, 256,
                               ["nocolumn.parquet", "no column 'text'", "body"]),
    "glob_matching_nothing": ({"corpus": "{r}/*.jsonl.zst"}, 256, ["glob", "matches no"]),
    "tokenizer_json_not_parsing": (
        {"corpus": "{r}/good.jsonl", "tokenizer": "bpe", "tokenizer_json": "{r}/tokenizer.json"},
        4096, ["tokenizer.json", "does not parse"]),
    "vocab_larger_than_model": (
        {"corpus": "{r}/good.jsonl", "tokenizer": "bpe", "bpe_vocab_size": 512}, 300,
        ["bpe_vocab_size=512", "model.vocab_size=300"]),
    "negative_weight": (
        {"sources": {"a": {"corpus": "{r}/good.jsonl", "weight": -1.0},
                     "b": {"corpus": "{r}/good.jsonl", "weight": 1.0}}}, 257,
        ["data.sources.a.weight=-1.0", ">= 0"]),
    "weights_sum_to_zero": (
        {"sources": {"a": {"corpus": "{r}/good.jsonl", "weight": 0.0},
                     "b": {"corpus": "{r}/good.jsonl", "weight": 0.0}}}, 257, ["sum to 0"]),
    "source_with_other_tokenizer": (
        {"sources": {"a": {"data_dir": "{r}/char_a", "weight": 1.0},
                     "b": {"data_dir": "{r}/byte_b", "weight": 1.0}}}, 257,
        ["source 'b'", "different tokenizer"]),
}


def _fill(value, root):
  if isinstance(value, str):
    return value.format(r=root)
  if isinstance(value, dict):
    return {k: _fill(v, root) for k, v in value.items()}
  return value


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  r = _write(tmp_path_factory.mktemp("bad"))
  prepare.prepare(str(r / "good.jsonl"), str(r / "char_a"), "char", 0.2)
  prepare.prepare(str(r / "good.jsonl"), str(r / "byte_b"), "byte", 0.2)
  return r


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_line_and_data_untouched(root, tmp_path, row):
  overrides, vocab, needles = ROWS[row]
  data = {**GOOD, **_fill(overrides, root)}
  out = tmp_path / "data"
  good = datasets.ensure({**GOOD, "corpus": str(root / "good.jsonl")}, str(out))
  before = helpers.snapshot(out)
  with pytest.raises(DataError) as e:
    spec_lib.check(data, vocab)  # preflight: stat and small reads
    datasets.ensure(data, str(out), vocab)  # the documents themselves
  msg = str(e.value)
  assert "\n" not in msg, msg
  for needle in needles:
    assert needle in msg, f"{needle!r} missing from: {msg}"
  assert helpers.snapshot(out) == before and good["train_tokens"] > 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp dir left behind


# Through the real command: refused before any compile, the existing workdir untouched.
MAIN_ROWS = ["jsonl_line_not_json", "parquet_without_column", "glob_matching_nothing",
             "tokenizer_json_not_parsing", "negative_weight", "source_with_other_tokenizer"]


def _flags(data, vocab):
  fields = {f"data.{k}": v for k, v in data.items() if k != "sources"}
  fields.update({"model.vocab_size": vocab, "data.eot_token": "<|endoftext|>",
                 "data.val_split": "documents", "train_steps": 40_000})  # passes the gate
  return helpers.tiny_flags(None, fields)


@pytest.mark.parametrize("row", MAIN_ROWS)
def test_bad_input_refused_by_train_main_before_compile(root, tmp_path, row):
  overrides, vocab, needles = ROWS[row]
  data = {**GOOD, **_fill(overrides, root)}
  config = None
  if "sources" in data:
    config = tmp_path / "mix.py"
    config.write_text("from ml_collections import ConfigDict\nfrom configs import "
                      "shakespeare_char\n\ndef get_config(arg=None):\n  c = "
                      "shakespeare_char.get_config()\n  c.data.sources = ConfigDict("
                      f"{data['sources']!r})\n  return c\n")
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("someone's files\n")
  before = helpers.snapshot(workdir)
  res = helpers.run_main(*_flags(data, vocab), workdir=workdir, count_compiles=True,
                         **({"config": str(config)} if config else {}))
  helpers.assert_one_line_error(res, "DataError", *needles)
  assert res.compiles == 0, f"{res.compiles} XLA compiles before refusing"
  assert helpers.snapshot(workdir) == before
