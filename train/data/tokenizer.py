"""Tokenizers that serialize to JSON, so a prepared data dir and a checkpoint can rebuild them.

Three kinds:
- `char`: vocabulary = the sorted set of the corpus's characters (nanoGPT's shakespeare_char).
- `byte`: the 256 UTF-8 byte values; needs no corpus.
- `bpe`: a Hugging Face `tokenizers` JSON, either trained here (byte-level BPE, `train.data.bpe`)
  or an existing `tokenizer.json` used as is. Its full JSON is the tokenizer's JSON form.

Each may carry an end-of-text token (`eot`) appended after every document. For `char` and
`byte` it is one extra id after the symbols (so vocab 65 becomes 66); without one their JSON and
fingerprint are exactly those of the earlier two-kind format, so old checkpoints still match.
"""
from __future__ import annotations

import abc
import hashlib
import json
from typing import Any, Sequence

import numpy as np

from core.errors import DataError

KINDS = ("char", "byte", "bpe")


class Tokenizer(abc.ABC):
  """What the data layer and sampling need: ids in, text out, and a JSON form."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids (max id + 1); the model's embedding needs at least this many rows."""

  @property
  def eos_id(self) -> int | None:
    """The end-of-text id appended after each document, or None (no such token)."""
    return None

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """Text -> int32 ids of shape [n] (never the end-of-text id for char/byte)."""

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Several texts at once; `bpe` overrides this with the library's batch encoder."""
    return [self.encode(t) for t in texts]

  @abc.abstractmethod
  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Ids -> text; the inverse of `encode` on text it accepted."""

  @abc.abstractmethod
  def to_json(self) -> dict[str, Any]:
    """A JSON-serializable dict that `tokenizer_from_json` turns back into this tokenizer."""

  @abc.abstractmethod
  def token_bytes(self) -> np.ndarray:
    """int64 [vocab_size]: UTF-8 bytes of text each id stands for (0 for end-of-text and other
    special ids). Bits per byte sums this over the scored targets, so it is comparable across
    tokenizers; exact for char, byte and byte-level BPE."""

  def fingerprint(self) -> str:
    """sha256 of the canonical JSON: equal fingerprints mean identical id assignments."""
    canon = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode("ascii")).hexdigest()

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Tokenizer) and self.to_json() == other.to_json()

  def __hash__(self) -> int:
    return hash(self.fingerprint())


def _as_ids(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
  """Ids as a flat int64 array; ids outside the vocabulary mean a model/tokenizer mismatch."""
  arr = np.asarray(ids).reshape(-1)
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise DataError(f"token ids must be integers, got dtype {arr.dtype}; pass integer ids")
  arr = arr.astype(np.int64)
  bad = (arr < 0) | (arr >= vocab_size)
  if bad.any():
    raise DataError(f"token id {int(arr[bad][0])} is outside the vocabulary [0, {vocab_size}); "
                    "decode with the tokenizer the ids were made with")
  return arr


def _check_eot(eot: Any) -> str | None:
  if eot is None:
    return None
  if not isinstance(eot, str) or not eot:
    raise DataError(f"end-of-text token must be a non-empty string, got {eot!r}; set "
                    "data.eot_token (e.g. '<|endoftext|>')")
  return eot


def _split_at_eot(arr: np.ndarray, eos: int | None, decode_part: Any, eot: str | None) -> str:
  """Decode runs of ordinary ids, writing the end-of-text string where its id occurs."""
  if eos is None or not (arr == eos).any():
    return decode_part(arr)
  cuts = np.flatnonzero(arr == eos)
  parts, start = [], 0
  for c in cuts:
    parts += [decode_part(arr[start:c]), eot]
    start = c + 1
  parts.append(decode_part(arr[start:]))
  return "".join(parts)


class CharTokenizer(Tokenizer):
  """One id per distinct character, ids in sorted code-point order (as nanoGPT does); the
  end-of-text id, if any, comes after them."""

  def __init__(self, vocab: str, eot: str | None = None):
    if not vocab:
      raise DataError("char tokenizer vocabulary is empty; build it from a non-empty corpus")
    points = np.frombuffer(vocab.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if (np.diff(points.astype(np.int64)) <= 0).any():
      raise DataError("char tokenizer vocabulary is not sorted and unique; rebuild it with "
                      "CharTokenizer.from_text or re-run pregate-prepare")
    self._vocab = vocab
    self._points = points.astype(np.uint32)
    self._eot = _check_eot(eot)

  @classmethod
  def from_text(cls, text: str, eot: str | None = None) -> CharTokenizer:
    if not text:
      raise DataError("cannot build a char tokenizer from empty text; use a non-empty corpus")
    return cls("".join(sorted(set(text))), eot)

  @property
  def vocab(self) -> str:
    return self._vocab

  @property
  def vocab_size(self) -> int:
    return len(self._vocab) + (self._eot is not None)

  @property
  def eos_id(self) -> int | None:
    return None if self._eot is None else len(self._vocab)

  def encode(self, text: str) -> np.ndarray:
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    idx = np.searchsorted(self._points, points)
    idx_clipped = np.minimum(idx, len(self._points) - 1)
    unknown = self._points[idx_clipped] != points
    if unknown.any():
      pos = int(np.argmax(unknown))
      char = text[pos]
      raise DataError(f"character {char!r} (U+{ord(char):04X}) at position {pos} is not in the "
                      f"char tokenizer's {len(self._vocab)}-character vocabulary; encode only "
                      "text made of the corpus's characters, or use the byte tokenizer")
    return idx.astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    arr = _as_ids(ids, self.vocab_size)
    return _split_at_eot(arr, self.eos_id, lambda a: self._points[a].astype("<u4").tobytes()
                         .decode("utf-32-le", "surrogatepass"), self._eot)

  def token_bytes(self) -> np.ndarray:
    sizes = [len(c.encode("utf-8", "surrogatepass")) for c in self._vocab]
    return np.array(sizes + [0] * (self._eot is not None), np.int64)

  def to_json(self) -> dict[str, Any]:
    return {"type": "char", "vocab": self._vocab, **({"eot": self._eot} if self._eot else {})}

  def __repr__(self) -> str:
    return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
  """The 256 byte values of the UTF-8 encoding (any text encodes, no corpus needed); the
  end-of-text id, if any, is 256."""

  def __init__(self, eot: str | None = None):
    self._eot = _check_eot(eot)

  @property
  def vocab_size(self) -> int:
    return 256 + (self._eot is not None)

  @property
  def eos_id(self) -> int | None:
    return None if self._eot is None else 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    # Sampled byte sequences need not be valid UTF-8, so bad bytes become U+FFFD, not an error.
    arr = _as_ids(ids, self.vocab_size)
    return _split_at_eot(arr, self.eos_id, lambda a: a.astype(np.uint8).tobytes()
                         .decode("utf-8", errors="replace"), self._eot)

  def token_bytes(self) -> np.ndarray:
    return np.array([1] * 256 + [0] * (self._eot is not None), np.int64)

  def to_json(self) -> dict[str, Any]:
    return {"type": "byte", **({"eot": self._eot} if self._eot else {})}

  def __repr__(self) -> str:
    return "ByteTokenizer()" if self._eot is None else f"ByteTokenizer(eot={self._eot!r})"


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizers` JSON (kind `bpe`): trained here, or a tokenizer.json as is.

  `eot` names the end-of-text token; it must be one of the tokenizer's tokens."""

  def __init__(self, hf_json: dict[str, Any], eot: str):
    from tokenizers import Tokenizer as _HF
    if not isinstance(hf_json, dict):
      raise DataError("bpe tokenizer JSON has no 'tokenizer' object; re-run pregate-prepare "
                      "to rewrite the manifest")
    try:
      self._hf = _HF.from_str(json.dumps(hf_json))
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
      raise DataError(f"the tokenizer JSON does not load in the tokenizers library "
                      f"({str(e).splitlines()[0][:200]}); pass a valid tokenizer.json") from None
    self._json = hf_json
    self._eot = _check_eot(eot)
    eos = self._hf.token_to_id(self._eot) if self._eot else None
    if eos is None:
      raise DataError(f"the tokenizer has no token {self._eot!r} to end documents with; set "
                      "data.eot_token to its end-of-text token (e.g. '</s>')")
    self._eos = int(eos)
    ids = self._hf.get_vocab(with_added_tokens=True).values()
    self._size = max(ids) + 1 if ids else 0

  @property
  def vocab_size(self) -> int:
    return self._size

  @property
  def eos_id(self) -> int:
    return self._eos

  @property
  def hf(self) -> Any:
    """The `tokenizers.Tokenizer` (for training tools and tests)."""
    return self._hf

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    encs = self._hf.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in encs]

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    arr = _as_ids(ids, self.vocab_size)
    return self._hf.decode(arr.tolist(), skip_special_tokens=False)

  def token_bytes(self) -> np.ndarray:
    """Byte-level models: each character of a token string is one byte (exact). Others: the
    token's text with SentencePiece's '▁' as a space and '<0xNN>' byte tokens as one byte."""
    out = np.zeros(self.vocab_size, np.int64)
    special = {t["id"] for t in self._json.get("added_tokens") or [] if t.get("special")}
    byte_level = "ByteLevel" in json.dumps(self._json.get("decoder"))
    for token, i in self._hf.get_vocab(with_added_tokens=True).items():
      if i in special:
        continue
      if byte_level:
        out[i] = len(token)
      elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        out[i] = 1
      else:
        out[i] = len(token.replace("\u2581", " ").encode("utf-8"))
    return out

  def to_json(self) -> dict[str, Any]:
    return {"type": "bpe", "eot": self._eot, "tokenizer": self._json}

  def __repr__(self) -> str:
    return f"HFTokenizer(vocab_size={self.vocab_size}, eot={self._eot!r})"


def build_tokenizer(kind: str, text: str = "", eot: str | None = None) -> Tokenizer:
  """The char or byte tokenizer for this corpus (`text` is only read by `char`); a bpe tokenizer
  is trained by `train.data.bpe` over the corpus's documents, not built from one string."""
  if kind == "char":
    return CharTokenizer.from_text(text, eot)
  if kind == "byte":
    return ByteTokenizer(eot)
  if kind == "bpe":
    raise DataError("a bpe tokenizer is trained over a corpus's documents by pregate-prepare "
                    "(or read from a tokenizer.json); take it from the prepared data's manifest")
  raise DataError(f"unknown tokenizer kind {kind!r}; use one of {', '.join(KINDS)}")


def tokenizer_from_json(d: dict[str, Any]) -> Tokenizer:
  """Inverse of `Tokenizer.to_json`; refuses malformed dicts (e.g. a corrupt manifest)."""
  if not isinstance(d, dict) or "type" not in d:
    raise DataError(f"tokenizer JSON must be a dict with a 'type' key, got {d!r:.80}; "
                    "re-run pregate-prepare to rewrite the manifest")
  kind = d["type"]
  if kind == "char":
    vocab = d.get("vocab")
    if not isinstance(vocab, str):
      raise DataError("char tokenizer JSON has no 'vocab' string; re-run pregate-prepare "
                      "to rewrite the manifest")
    return CharTokenizer(vocab, d.get("eot"))
  if kind == "byte":
    return ByteTokenizer(d.get("eot"))
  if kind == "bpe":
    return HFTokenizer(d.get("tokenizer"), d.get("eot"))
  raise DataError(f"unknown tokenizer type {kind!r} in tokenizer JSON; use one of "
                  f"{', '.join(KINDS)} (re-run pregate-prepare)")
