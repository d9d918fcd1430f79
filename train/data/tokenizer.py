"""Tokenizers that serialize to JSON, so a prepared data dir and a checkpoint can rebuild them.

Two kinds: `char` (vocabulary = the sorted set of the corpus's characters, nanoGPT's
shakespeare_char) and `byte` (the 256 UTF-8 byte values; needs no corpus to build).
Encoding is vectorised with numpy because the whole corpus is encoded in one call.
"""
from __future__ import annotations

import abc
import hashlib
import json
from typing import Any, Sequence

import numpy as np

from core.errors import DataError

KINDS = ("char", "byte")


class Tokenizer(abc.ABC):
  """What the data layer and sampling need: ids in, text out, and a JSON form."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of distinct ids; the model's embedding needs at least this many rows."""

  @abc.abstractmethod
  def encode(self, text: str) -> np.ndarray:
    """Text -> int32 ids of shape [n]."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Ids -> text; the inverse of `encode` on text it accepted."""

  @abc.abstractmethod
  def to_json(self) -> dict[str, Any]:
    """A JSON-serializable dict that `tokenizer_from_json` turns back into this tokenizer."""

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


class CharTokenizer(Tokenizer):
  """One id per distinct character, ids in sorted code-point order (as nanoGPT does)."""

  def __init__(self, vocab: str):
    if not vocab:
      raise DataError("char tokenizer vocabulary is empty; build it from a non-empty corpus")
    points = np.frombuffer(vocab.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if (np.diff(points.astype(np.int64)) <= 0).any():
      raise DataError("char tokenizer vocabulary is not sorted and unique; rebuild it with "
                      "CharTokenizer.from_text or re-run pregate-prepare")
    self._vocab = vocab
    self._points = points.astype(np.uint32)

  @classmethod
  def from_text(cls, text: str) -> CharTokenizer:
    if not text:
      raise DataError("cannot build a char tokenizer from empty text; use a non-empty corpus")
    return cls("".join(sorted(set(text))))

  @property
  def vocab(self) -> str:
    return self._vocab

  @property
  def vocab_size(self) -> int:
    return len(self._vocab)

  def encode(self, text: str) -> np.ndarray:
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    idx = np.searchsorted(self._points, points)
    idx_clipped = np.minimum(idx, len(self._points) - 1)
    unknown = self._points[idx_clipped] != points
    if unknown.any():
      pos = int(np.argmax(unknown))
      char = text[pos]
      raise DataError(f"character {char!r} (U+{ord(char):04X}) at position {pos} is not in the "
                      f"char tokenizer's {self.vocab_size}-character vocabulary; encode only text "
                      "made of the corpus's characters, or use the byte tokenizer")
    return idx.astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    arr = _as_ids(ids, self.vocab_size)
    return self._points[arr].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

  def to_json(self) -> dict[str, Any]:
    return {"type": "char", "vocab": self._vocab}

  def __repr__(self) -> str:
    return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
  """The 256 byte values of the UTF-8 encoding: any text encodes, no corpus needed."""

  @property
  def vocab_size(self) -> int:
    return 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    # Sampled byte sequences need not be valid UTF-8, so bad bytes become U+FFFD, not an error.
    arr = _as_ids(ids, self.vocab_size)
    return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def to_json(self) -> dict[str, Any]:
    return {"type": "byte"}

  def __repr__(self) -> str:
    return "ByteTokenizer()"


def build_tokenizer(kind: str, text: str = "") -> Tokenizer:
  """The tokenizer of `kind` for this corpus (`text` is only read by `char`)."""
  if kind == "char":
    return CharTokenizer.from_text(text)
  if kind == "byte":
    return ByteTokenizer()
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
    return CharTokenizer(vocab)
  if kind == "byte":
    return ByteTokenizer()
  raise DataError(f"unknown tokenizer type {kind!r} in tokenizer JSON; use one of "
                  f"{', '.join(KINDS)} (re-run pregate-prepare)")
