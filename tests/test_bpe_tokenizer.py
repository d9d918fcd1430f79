"""BPE: trained deterministically, lossless on the corpus, an existing tokenizer.json used as is,
and that tokenizer travelling into a checkpoint and back out through load_for_eval, sampling and
evaluation."""
import json

import numpy as np
import pytest

import helpers
from core.errors import DataError
from train.data import bpe, prepare
from train.data import tokenizer as tk

SHAKESPEARE_DOCS = [d for d in helpers.CORPUS.read_text("utf-8").split("\n\n") if d]
EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def trained():
  return bpe.train(iter(SHAKESPEARE_DOCS), 600, EOT, ["<pad>"])


def test_decode_encode_is_lossless_on_the_corpus(trained):
  encoded = trained.encode_batch(SHAKESPEARE_DOCS)
  assert all(trained.decode(ids) == doc for ids, doc in zip(encoded, SHAKESPEARE_DOCS))
  odd = "tabs\tand  spaces, ünïcödé, 東京 🙂, and a literal <|endoftext|> too\n"
  assert trained.decode(trained.encode(odd)) == odd
  assert trained.vocab_size == 600 and trained.eos_id == 0  # specials first
  assert trained.hf.token_to_id("<pad>") == 1


def test_token_bytes_are_exact_for_byte_level_bpe(trained):
  table = trained.token_bytes()
  for doc in SHAKESPEARE_DOCS[:200] + ["ünïcödé 東京 🙂"]:
    assert table[trained.encode(doc)].sum() == len(doc.encode("utf-8"))
  assert table[trained.eos_id] == 0


def test_prepare_trains_on_training_documents_only_and_twice_the_same(tmp_path):
  a = prepare.prepare(str(helpers.CORPUS), str(tmp_path / "a"), "bpe", 0.1,
                      txt_separator="\n\n", bpe_vocab_size=400)
  b = prepare.prepare(str(helpers.CORPUS), str(tmp_path / "b"), "bpe", 0.1,
                      txt_separator="\n\n", bpe_vocab_size=400)
  assert a["tokenizer"] == b["tokenizer"] and a["train_sha256"] == b["train_sha256"]
  assert a["tokenizer"]["eot"] == EOT and a["eos_id"] == 0 and a["vocab_size"] == 400
  tok = tk.tokenizer_from_json(a["tokenizer"])
  from train.data import encode
  train_docs = [d for d in SHAKESPEARE_DOCS if not encode.is_val_document(d, 0.1)]
  assert tok == bpe.train(iter(train_docs), 400, EOT)  # val documents never shaped the merges


def test_existing_tokenizer_json_is_used_as_is(trained, tmp_path):
  path = tmp_path / "tokenizer.json"
  trained.hf.save(str(path))
  on_disk = json.loads(path.read_text())
  m = prepare.prepare(str(helpers.CORPUS), str(tmp_path / "out"), "bpe", 0.1,
                      txt_separator="\n\n", tokenizer_json=str(path))
  assert m["tokenizer"] == {"type": "bpe", "eot": EOT, "tokenizer": on_disk}
  assert m["settings"]["tokenizer_json"] == bpe.read_tokenizer_json(str(path))[1]
  loaded = tk.tokenizer_from_json(m["tokenizer"])
  np.testing.assert_array_equal(loaded.encode(SHAKESPEARE_DOCS[3]),
                                trained.encode(SHAKESPEARE_DOCS[3]))


@pytest.mark.parametrize("content,needle", [
    ("{not json", "does not parse"), ('{"a": 1}', "no 'model' section"),
    ('{"model": {"type": "BPE", "vocab": 3}}', "does not load")])
def test_unusable_tokenizer_json_is_one_line(tmp_path, content, needle):
  path = tmp_path / "tokenizer.json"
  path.write_text(content)
  with pytest.raises(DataError, match=needle) as e:
    bpe.load(str(path), EOT)
  assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_eot_missing_from_tokenizer_json_names_the_field(trained, tmp_path):
  path = tmp_path / "tokenizer.json"
  trained.hf.save(str(path))
  with pytest.raises(DataError, match="data.eot_token"):
    bpe.load(str(path), "</s>")
