"""pregate's char and byte tokenizers as Hugging Face tokenizer files: `AutoTokenizer` loads
them and encodes the bundled corpus to exactly pregate's ids, decodes back to the text, and the
files read back as the same pregate tokenizer; other tokenizers are refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

import hf_helpers as hh

pytest.importorskip("transformers")


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_autotokenizer_encodes_the_corpus_to_pregate_ids(kind, tmp_path):
  from transformers import AutoTokenizer

  from train.data.tokenizer import build_tokenizer
  from train.hf import tokenizer_json
  text = hh.corpus()
  tok = build_tokenizer(kind, text)
  tokenizer_json.write(tok, str(tmp_path), 128)
  hf = AutoTokenizer.from_pretrained(str(tmp_path))
  theirs = np.asarray(hf(text, add_special_tokens=True)["input_ids"])
  ours = tok.encode(text)
  assert len(theirs) == len(ours) == len(text.encode("utf-8") if kind == "byte" else text)
  np.testing.assert_array_equal(theirs, ours)
  assert hf.decode(ours[:2000]) == text[:2000]
  assert (hf.bos_token, hf.eos_token, hf.pad_token) == (None, None, None)
  assert tokenizer_json.read(str(tmp_path)) == tok


def test_byte_tokenizer_matches_on_any_text(tmp_path):
  from transformers import AutoTokenizer

  from train.data.tokenizer import ByteTokenizer
  from train.hf import tokenizer_json
  tokenizer_json.write(ByteTokenizer(), str(tmp_path), 64)
  hf = AutoTokenizer.from_pretrained(str(tmp_path))
  text = "naïve café — 東京 ✓\n\ttabs  and  spaces \x00\x7f"
  np.testing.assert_array_equal(hf(text)["input_ids"], ByteTokenizer().encode(text))
  assert hf.decode(ByteTokenizer().encode(text)) == text


@pytest.mark.parametrize("change,needle", [
    (lambda j: j["model"].update(type="Unigram"), "Unigram tokenizer"),
    (lambda j: j["model"]["merges"].append(["Ġ", "t"]), "BPE tokenizer"),
    (lambda j: j.update(added_tokens=[{"id": 256, "content": "<|eot|>"}]), "special tokens"),
])
def test_foreign_tokenizer_refused(tmp_path, change, needle):
  from train.data.tokenizer import ByteTokenizer
  from train.hf import tokenizer_json
  from train.hf.weights import HFConversionError
  tokenizer_json.write(ByteTokenizer(), str(tmp_path), 64)
  path = tmp_path / "tokenizer.json"
  obj = json.loads(path.read_text())
  change(obj)
  path.write_text(json.dumps(obj))
  with pytest.raises(HFConversionError) as e:
    tokenizer_json.read(str(tmp_path))
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_char_vocabulary_in_another_order_refused(tmp_path):
  """Same characters, other ids: embedding it would silently scramble every token."""
  from train.hf import tokenizer_json
  from train.hf.weights import HFConversionError
  tokenizer_json.write(hh.char_tokenizer(), str(tmp_path), 64)
  path = tmp_path / "tokenizer.json"
  obj = json.loads(path.read_text())
  vocab = obj["model"]["vocab"]
  a, b = list(vocab)[:2]
  vocab[a], vocab[b] = vocab[b], vocab[a]
  path.write_text(json.dumps(obj))
  with pytest.raises(HFConversionError, match="not the sorted characters"):
    tokenizer_json.read(str(tmp_path))
