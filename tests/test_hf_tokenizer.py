"""pregate's char, byte and BPE tokenizers as Hugging Face tokenizer files: `AutoTokenizer`
loads them and encodes the bundled corpus to exactly pregate's ids, decodes back to the text,
and the files read back as the same pregate tokenizer; a foreign tokenizers JSON is embedded
as is when its end-of-text token is named, else refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

import hf_helpers as hh

pytestmark = pytest.mark.hf


pytest.importorskip("transformers")


def _bpe(eot: str = "<|endoftext|>"):
  """A byte-level BPE trained here on the bundled corpus (as pregate-prepare trains one)."""
  from train.data import bpe
  return bpe.train(hh.corpus().split("\n\n"), 512, eot)


def _tokenizer(kind: str, eot: str | None):
  from train.data.tokenizer import build_tokenizer
  return _bpe() if kind == "bpe" else build_tokenizer(kind, hh.corpus(), eot)


@pytest.mark.parametrize("kind,eot", [("char", None), ("byte", None), ("bpe", "<|endoftext|>"),
                                      ("char", "<|eot|>"), ("byte", "<|endoftext|>")])
def test_autotokenizer_encodes_the_corpus_to_pregate_ids(kind, eot, tmp_path):
  from transformers import AutoTokenizer

  from train.hf import tokenizer_json
  text = hh.corpus()
  tok = _tokenizer(kind, eot)
  tokenizer_json.write(tok, str(tmp_path), 128)
  hf = AutoTokenizer.from_pretrained(str(tmp_path))
  theirs = np.asarray(hf(text, add_special_tokens=True)["input_ids"])
  ours = tok.encode(text)
  if kind != "bpe":
    assert len(ours) == len(text.encode("utf-8") if kind == "byte" else text)
  else:
    assert len(ours) < 0.6 * len(text)  # merges were learned, so ids are not characters
  np.testing.assert_array_equal(theirs, ours)
  assert hf.decode(ours[:2000]) == tok.decode(ours[:2000]) == text[:len(tok.decode(ours[:2000]))]
  assert (hf.bos_token, hf.eos_token, hf.pad_token) == (None, eot, None)
  assert hf.eos_token_id == tok.eos_id and len(hf) == tok.vocab_size
  assert tokenizer_json.read(str(tmp_path)) == tok


def test_bpe_end_of_text_round_trips(tmp_path):
  """Documents joined by the end-of-text token encode to the same ids on both sides."""
  from transformers import AutoTokenizer

  from train.hf import tokenizer_json
  tok = _bpe()
  tokenizer_json.write(tok, str(tmp_path), 128)
  hf = AutoTokenizer.from_pretrained(str(tmp_path))
  docs = hh.corpus().split("\n\n")[:50]
  ours = np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in docs])
  theirs = hf("<|endoftext|>".join(docs) + "<|endoftext|>")["input_ids"]
  np.testing.assert_array_equal(theirs, ours)


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
    (lambda j: j.update(added_tokens=[{"id": 256, "content": "<|eot|>"}]), "no eos_token"),
])
def test_foreign_tokenizer_without_eos_refused(tmp_path, change, needle):
  """Not pregate's char/byte layout and no end-of-text token named: nothing to embed it with."""
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
  assert needle in str(e.value) and "eos_token" in str(e.value) and "\n" not in str(e.value)


def test_foreign_tokenizer_with_eos_embeds_as_is(tmp_path):
  """A tokenizers JSON of another layout, with its eos_token named, is embedded unchanged
  (kind bpe) and encodes as AutoTokenizer does; an eos_token it lacks is one line."""
  from transformers import AutoTokenizer

  from train.data.tokenizer import HFTokenizer
  from train.hf import tokenizer_json
  from train.hf.weights import HFConversionError
  tokenizer_json.write(_bpe("</s>"), str(tmp_path), 64)
  obj = json.loads((tmp_path / "tokenizer.json").read_text())
  obj["normalizer"] = {"type": "Lowercase"}
  (tmp_path / "tokenizer.json").write_text(json.dumps(obj))
  tok = tokenizer_json.read(str(tmp_path))
  assert isinstance(tok, HFTokenizer) and tok.eos_id == 0
  text = hh.corpus()[:5000]
  np.testing.assert_array_equal(AutoTokenizer.from_pretrained(str(tmp_path))(text)["input_ids"],
                                tok.encode(text))
  cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg | {"eos_token": "<nope>"}))
  with pytest.raises(HFConversionError, match="no token '<nope>'") as e:
    tokenizer_json.read(str(tmp_path))
  assert "\n" not in str(e.value)


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
