"""One unit of preparation work: a batch of documents -> their token ids, each document followed
by the end-of-text id, plus per-document lengths and (documents split) which are validation.

The same function runs in the preparing process (1 worker) and in spawned worker processes
(N workers), on the same units in the same order, so the output cannot depend on the worker
count. Workers keep the tokenizers library single-threaded: the parallelism is the processes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np

from train.data.tokenizer import Tokenizer, tokenizer_from_json

_VAL_PERSON = b"pregate-val"


def is_val_document(text: str, val_fraction: float) -> bool:
  """Whole-document hold-out by content hash: deterministic, independent of file order and
  worker count, and identical documents always land in the same split (no duplicate leaks
  from train into val)."""
  digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                           person=_VAL_PERSON).digest()
  return int.from_bytes(digest, "little") < val_fraction * 2.0 ** 64


@dataclasses.dataclass
class Encoded:
  tokens: np.ndarray  # storage dtype; documents back to back, each + end-of-text
  lengths: np.ndarray  # int64 [docs]: tokens per document, end-of-text included
  is_val: np.ndarray | None  # bool [docs] (documents split), else None


def encode_docs(tok: Tokenizer, docs: Sequence[str], dtype: str,
                val_fraction: float | None) -> Encoded:
  parts = tok.encode_batch(docs)
  eos = tok.eos_id
  if eos is not None:
    tail = np.array([eos], np.int32)
    parts = [p for ids in parts for p in (ids, tail)]
    lengths = np.fromiter((len(p) for p in parts), np.int64, len(parts))
    lengths = lengths[0::2] + 1
  else:
    lengths = np.fromiter((len(p) for p in parts), np.int64, len(parts))
  tokens = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
  is_val = None
  if val_fraction is not None:
    is_val = np.fromiter((is_val_document(d, val_fraction) for d in docs), bool, len(docs))
  return Encoded(tokens, lengths, is_val)


_WORKER: dict[str, Any] = {}


def init_worker(tokenizer_path: str, dtype: str, val_fraction: float | None) -> None:
  """Pool initializer: build the tokenizer (its JSON form, from a file) once per process,
  single-threaded."""
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  with open(tokenizer_path, encoding="utf-8") as f:
    tok = tokenizer_from_json(json.load(f))
  _WORKER.update(tok=tok, dtype=dtype, vf=val_fraction)


def encode_unit(docs: list[str]) -> Encoded:
  """The worker-side call (after `init_worker`)."""
  return encode_docs(_WORKER["tok"], docs, _WORKER["dtype"], _WORKER["vf"])
