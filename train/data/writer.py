"""Writing one prepared split: its token array and document offsets, appended in order
(`store.GrowingArray`), with the counts the manifest records; and nanoGPT's contiguous tail
split, made from one whole stream after it is written."""
from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import DataError
from train.data import store

ALL = "_all"  # the whole stream, before a tail split cuts it


class SplitWriter:
  """A split's token array and document offsets, appended in order."""

  def __init__(self, data_dir: str, name: str, dtype: str, table: np.ndarray):
    self.tokens = store.GrowingArray(store.join(data_dir, name), dtype)
    self.offsets = store.GrowingArray(store.join(data_dir, name + store.OFFSETS), "int64")
    self.n = self.docs = self.bytes = 0
    self._table = table

  def add_docs(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
    if lengths.size:
      self.offsets.append(self.n + np.concatenate([[0], np.cumsum(lengths[:-1])]))
      self.docs += lengths.size
      self.add_tokens(tokens)

  def add_tokens(self, tokens: np.ndarray) -> None:
    self.tokens.append(tokens)
    self.n += tokens.size
    self.bytes += int(self._table[tokens].sum())

  def close(self) -> dict[str, Any]:
    self.offsets.append(np.array([self.n]))
    n, sha = self.tokens.close()
    self.offsets.close()
    return {"tokens": n, "sha256": sha, "documents": self.docs, "bytes": self.bytes}


def split_tail(data_dir: str, whole: SplitWriter, val_fraction: float, dtype: str,
               table: np.ndarray) -> dict[str, dict[str, Any]]:
  """nanoGPT's split: the first (1 - val_fraction) of the token stream train, the rest val."""
  info = whole.close()
  n = info["tokens"]
  n_train = int(n * (1.0 - val_fraction))
  if n - n_train < 1:
    raise DataError(f"val_fraction={val_fraction} of {n} tokens leaves no validation tokens; "
                    "raise val_fraction or use a larger corpus")
  if n_train < 1:
    raise DataError(f"val_fraction={val_fraction} of {n} tokens leaves no training tokens; "
                    "lower val_fraction or use a larger corpus")
  train, val = (SplitWriter(data_dir, s, dtype, table) for s in store.SPLITS)
  pos = 0
  for block in store.read_blocks(store.join(data_dir, ALL), 0, n):
    cut = min(max(n_train - pos, 0), block.size)
    train.add_tokens(block[:cut])
    val.add_tokens(block[cut:])
    pos += block.size
  val.offsets.append(np.array([0]))
  for starts in store.read_blocks(store.join(data_dir, ALL + store.OFFSETS), 0,
                                  info["documents"]):
    train.offsets.append(starts[starts < n_train])
    val.offsets.append(starts[starts > n_train] - n_train)
    train.docs += int((starts < n_train).sum())
    val.docs += int((starts > n_train).sum())
  val.docs += 1  # the document the cut falls in (or the one starting at the cut)
  for name in (ALL, ALL + store.OFFSETS):
    store.delete_array(data_dir, name)
  return {"train": train.close(), "val": val.close()}
