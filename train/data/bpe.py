"""Byte-level BPE with the Hugging Face `tokenizers` library: trained on a corpus's documents,
or an existing `tokenizer.json` read as is (offline; nothing is downloaded).

Training is GPT-2's recipe: `models.BPE` + `pre_tokenizers.ByteLevel` (no prefix space, so
decode(encode(doc)) == doc) + `decoders.ByteLevel`, the 256 byte symbols as the initial alphabet
(so every text encodes, nothing is unknown) and the special tokens first (the end-of-text token
is id 0). The trainer is deterministic for the same documents in the same order and the same
settings (tests/test_bpe_tokenizer.py trains twice and compares the JSON).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterable, Sequence

from core.errors import DataError
from train.data.tokenizer import HFTokenizer

MIN_VOCAB = 256  # the byte alphabet; merges come on top


def parse_special_tokens(value: str | Sequence[str]) -> list[str]:
  """'a,b' or ['a', 'b'] -> ['a', 'b'] (empty names dropped, order kept, duplicates refused)."""
  names = [s.strip() for s in value.split(",")] if isinstance(value, str) else list(value)
  names = [n for n in names if n]
  if len(set(names)) != len(names):
    raise DataError(f"special tokens {names} repeat a name; list each once in "
                    "data.special_tokens")
  return names


def check_vocab_size(vocab_size: int, specials: Sequence[str]) -> int:
  floor = MIN_VOCAB + len(specials)
  if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < floor:
    raise DataError(f"bpe vocabulary size {vocab_size!r} is below {floor} (256 byte symbols + "
                    f"{len(specials)} special token(s)); set data.bpe_vocab_size (0 = "
                    "model.vocab_size) to at least that")
  return vocab_size


def train(documents: Iterable[str], vocab_size: int, eot: str,
          special_tokens: Sequence[str] = ()) -> HFTokenizer:
  """Train a byte-level BPE of `vocab_size` ids (incl. specials) over `documents` (streamed:
  the trainer keeps word counts, not the text)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  specials = [eot] + [s for s in special_tokens if s != eot]
  check_vocab_size(vocab_size, specials)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(documents, trainer=trainer)
  return HFTokenizer(json.loads(tok.to_str()), eot)


def read_tokenizer_json(path: str) -> tuple[dict[str, Any], str]:
  """(parsed JSON, sha256 of the file's bytes) of a tokenizer.json; one-line refusals."""
  fix = "pass a tokenizer.json written by the Hugging Face tokenizers library"
  if not os.path.isfile(path):
    raise DataError(f"tokenizer_json {path} does not exist or is not a file; {fix}")
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f"tokenizer_json {path} cannot be read ({e.strerror}); {fix}") from None
  try:
    parsed = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"tokenizer_json {path} does not parse as JSON ({e}); {fix}") from None
  if not isinstance(parsed, dict) or "model" not in parsed:
    raise DataError(f"tokenizer_json {path} is JSON but has no 'model' section; {fix}")
  return parsed, hashlib.sha256(raw).hexdigest()


def load(path: str, eot: str) -> HFTokenizer:
  """An existing tokenizer.json, used as is; `eot` must be one of its tokens."""
  parsed, _ = read_tokenizer_json(path)
  try:
    return HFTokenizer(parsed, eot)
  except DataError as e:
    raise DataError(f"tokenizer_json {path}: {e}") from None
