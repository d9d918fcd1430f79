"""Tokenizers: round trips, JSON round trips, and one-line errors for unusable input."""
import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataError
from train.data import tokenizer as tk

SHAKESPEARE = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"
TEXT = "Hello, wörld!\nΣοφία — 東京 🙂\ttabs & spaces  \n"


def test_char_round_trip_and_vocab():
  t = tk.build_tokenizer("char", TEXT)
  ids = t.encode(TEXT)
  assert ids.dtype == np.int32 and ids.shape == (len(TEXT),)
  assert t.decode(ids) == TEXT
  assert t.vocab == "".join(sorted(set(TEXT)))
  assert t.vocab_size == len(set(TEXT))
  # Ids follow sorted code-point order (nanoGPT's stoi), so "\t" < "\n" < " " map to 0, 1, 2.
  assert t.encode("\t\n ").tolist() == [0, 1, 2]


def test_char_vocab_of_tinyshakespeare_is_65():
  t = tk.build_tokenizer("char", SHAKESPEARE.read_text("utf-8"))
  assert t.vocab_size == 65
  assert t.decode(t.encode("First Citizen:")) == "First Citizen:"


def test_byte_round_trip_counts_utf8_bytes():
  t = tk.build_tokenizer("byte", "ignored")
  ids = t.encode(TEXT)
  assert t.vocab_size == 256
  assert ids.dtype == np.int32 and len(ids) == len(TEXT.encode("utf-8")) > len(TEXT)
  assert t.decode(ids) == TEXT
  assert t.decode(np.array([0xC3])) == "\ufffd"  # a cut multi-byte char decodes, not raises


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_json_round_trip(kind):
  t = tk.build_tokenizer(kind, TEXT)
  d = json.loads(json.dumps(t.to_json()))
  t2 = tk.tokenizer_from_json(d)
  assert type(t2) is type(t) and t2 == t
  assert t2.fingerprint() == t.fingerprint()
  np.testing.assert_array_equal(t2.encode(TEXT), t.encode(TEXT))


def test_fingerprint_tells_tokenizers_apart():
  a = tk.build_tokenizer("char", "abc")
  b = tk.build_tokenizer("char", "abd")
  assert a.fingerprint() != b.fingerprint()
  assert a.fingerprint() != tk.ByteTokenizer().fingerprint()
  assert a.fingerprint() == tk.build_tokenizer("char", "cba").fingerprint()


def test_unknown_character_names_it():
  t = tk.build_tokenizer("char", "abc")
  with pytest.raises(DataError) as e:
    t.encode("abz")
  msg = str(e.value)
  assert "'z'" in msg and "position 2" in msg and "\n" not in msg


def test_unknown_kind_lists_valid_kinds():
  with pytest.raises(DataError) as e:
    tk.build_tokenizer("wordpiece", "abc")
  msg = str(e.value)
  assert "'wordpiece'" in msg and "char" in msg and "bpe" in msg and "\n" not in msg
  with pytest.raises(DataError, match="trained over a corpus"):
    tk.build_tokenizer("bpe", "abc")  # a BPE comes from its documents, not one string


@pytest.mark.parametrize("kind,size", [("char", None), ("byte", 257)])
def test_end_of_text_id_follows_the_symbols(kind, size):
  t = tk.build_tokenizer(kind, TEXT, eot="<|endoftext|>")
  plain = tk.build_tokenizer(kind, TEXT)
  assert t.vocab_size == plain.vocab_size + 1 == (size or len(set(TEXT)) + 1)
  assert t.eos_id == plain.vocab_size and plain.eos_id is None
  np.testing.assert_array_equal(t.encode(TEXT), plain.encode(TEXT))  # text never yields it
  ids = np.concatenate([t.encode("ab"), [t.eos_id], t.encode("c")]) if kind == "byte" else \
      np.concatenate([t.encode("He"), [t.eos_id], t.encode("l")])
  assert t.decode(ids) in ("ab<|endoftext|>c", "He<|endoftext|>l")
  assert tk.tokenizer_from_json(json.loads(json.dumps(t.to_json()))) == t
  assert plain.to_json() == {"type": kind, **({"vocab": plain.vocab} if kind == "char" else {})}
  assert t.token_bytes()[t.eos_id] == 0 and t.token_bytes().shape == (t.vocab_size,)


def test_token_bytes_count_utf8_bytes():
  t = tk.build_tokenizer("char", TEXT)
  ids = t.encode(TEXT)
  assert t.token_bytes()[ids].sum() == len(TEXT.encode("utf-8"))
  b = tk.ByteTokenizer()
  assert b.token_bytes()[b.encode(TEXT)].sum() == len(TEXT.encode("utf-8"))


@pytest.mark.parametrize("bad", [{}, {"type": "bpe"}, {"type": "char"},
                                 {"type": "char", "vocab": "ba"}, {"type": "char", "vocab": "aab"},
                                 {"type": "char", "vocab": ""}, {"type": "byte", "eot": ""},
                                 {"type": "bpe", "eot": "<|endoftext|>", "tokenizer": "x"}])
def test_bad_json_is_refused(bad):
  with pytest.raises(DataError):
    tk.tokenizer_from_json(bad)


def test_decode_refuses_out_of_vocab_ids():
  t = tk.build_tokenizer("char", "abc")
  with pytest.raises(DataError, match="outside the vocabulary"):
    t.decode([0, 3])
  with pytest.raises(DataError):
    tk.ByteTokenizer().decode([256])


def test_empty_corpus_cannot_build_char_vocab():
  with pytest.raises(DataError):
    tk.build_tokenizer("char", "")
