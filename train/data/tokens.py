"""Token sets a pipeline reads: one prepared split (`TokenArray`, a zarr3 array read through
tensorstore with a chunk cache) or one split of a weighted mixture of sources
(`MixtureTokens`). Both draw the windows of batch i from (seed, i) alone."""
from __future__ import annotations

import hashlib
import os
from typing import Any, Sequence

import numpy as np
import tensorstore as ts

from core.checks import first_line
from core.errors import DataError
from train.data import documents, store
from train.data.mixture import DEFAULT_BLOCK, Assignment

DEFAULT_CACHE_BYTES = 256 << 20


class TokenArray:
  """A prepared 1-D token array, read through tensorstore with a chunk cache."""

  def __init__(self, store: ts.TensorStore, path: str, split: str, sha256: str | None):
    self._store = store
    self.path = path
    self.split = split
    self._sha256 = sha256
    self._offsets: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self._store.shape[0])

  def __repr__(self) -> str:
    return f"TokenArray({self.path!r}, tokens={len(self)}, dtype={self._store.dtype.name})"

  @property
  def known_sha256(self) -> str | None:
    """The manifest's hash if there is one; never reads the data."""
    return self._sha256

  @property
  def sha256(self) -> str:
    """The manifest's hash of the stored tokens, or (no manifest) one computed here, once."""
    if self._sha256 is None:
      h = hashlib.sha256()
      step = store.CHUNK_TOKENS * 16
      for start in range(0, len(self), step):
        chunk = self._store[start:min(start + step, len(self))].read().result()
        h.update(chunk.astype(chunk.dtype.newbyteorder("<")).tobytes())
      self._sha256 = h.hexdigest()
    return self._sha256

  def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Tokens [start, stop) as int32 (one contiguous read)."""
    stop = len(self) if stop is None else stop
    return self._store[start:stop].read().result().astype(np.int32)

  def read_windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """int32 [len(starts), length]: windows tokens[s:s+length], in ONE batched read."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if starts.size and (starts.min() < 0 or starts.max() + length > len(self)):
      raise IndexError(f"window starts must lie in [0, {len(self) - length}] for length {length}")
    index = starts[:, None] + np.arange(length, dtype=np.int64)
    return self._store.vindex[index].read().result().astype(np.int32)

  def offsets(self) -> np.ndarray:
    """int64: every document's start in this split, then its length (`S_offsets`), read once
    and held in host memory (8 bytes a document)."""
    if self._offsets is None:
      path = self.path.rstrip("/") + store.OFFSETS
      try:
        arr = ts.open(store.zarr3_spec(path), open=True).result()
      except ValueError as e:
        raise DataError(f"cannot open the document offsets {path} ({first_line(e, 120)}); "
                        "re-run pregate-prepare, or set --config.data.document_masking=False"
                        ) from e
      self._offsets = np.asarray(arr.read().result(), np.int64)
    return self._offsets

  def documents(self) -> int:
    """Documents in this split (a tail split's cut counts the document it falls in)."""
    return max(len(self.offsets()) - 1, 1)

  def document_starts(self, window_starts: np.ndarray, length: int) -> np.ndarray:
    """bool [n, length]: the positions of these windows that start a document."""
    return documents.starts_in(self.offsets(), window_starts, length)

  def global_starts(self, seed: int, index: int, stream: tuple[int, ...], global_batch: int,
                    length: int) -> np.ndarray:
    """Start offsets of the global batch's windows of `length` tokens."""
    rng = np.random.default_rng([seed, int(index), *stream])
    return rng.integers(0, len(self) - length + 1, size=global_batch)

  def batch_windows(self, seed: int, index: int, stream: tuple[int, ...], global_batch: int,
                    rows: slice, length: int, starts: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """(int32 [rows, length] windows of this process's rows of batch `index`, and with
    `starts` their document-start mask, else None)."""
    at = self.global_starts(seed, index, stream, global_batch, length)[rows]
    return (self.read_windows(at, length),
            self.document_starts(at, length) if starts else None)

  def describe(self) -> dict[str, Any]:
    return {"tokens": len(self), "data_sha256": self.known_sha256}

  def require(self, n_tokens: int, why: str) -> None:
    """Refuse early, naming the split, when it is too short for one window."""
    if len(self) < n_tokens:
      other = {"val": "; or raise val_fraction", "train": "; or lower val_fraction"}
      raise DataError(f"the {self.split} split ({self.path}) has {len(self):,} tokens but {why} "
                      f"needs at least {n_tokens:,}; lower --config.batch.seq_len, use a larger "
                      f"corpus{other.get(self.split, '')}")


def open_tokens(path: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> TokenArray:
  """Open a prepared zarr3 token array; its manifest (if beside it) supplies hash and split."""
  path = str(path)
  spec = store.zarr3_spec(path)
  # Prepared arrays never change after the rename, so staleness is checked once, at open.
  spec["recheck_cached_data"] = "open"
  context = ts.Context({"cache_pool": {"total_bytes_limit": int(cache_bytes)}})
  try:
    arr = ts.open(spec, read=True, context=context).result()
  except ValueError as e:
    raise DataError(f"cannot open token array {path} ({first_line(e, 160)}); run "
                    "pregate-prepare to create it") from e
  if arr.rank != 1 or arr.dtype.name not in ("uint16", "uint32"):
    raise DataError(f"{path} is not a 1-D uint16/uint32 token array (rank {arr.rank}, "
                    f"{arr.dtype.name}); re-run pregate-prepare")
  split = os.path.basename(path.rstrip("/"))
  data_dir = path.rstrip("/")[:-len(split)].rstrip("/") or "."
  sha = None
  if split in store.SPLITS:
    try:
      manifest = store.load_manifest(data_dir)
    except DataError:
      manifest = None
    if manifest is not None:
      if manifest[f"{split}_tokens"] != arr.shape[0]:
        raise DataError(f"{path} holds {arr.shape[0]:,} tokens but its manifest says "
                        f"{manifest[f'{split}_tokens']:,}; re-run pregate-prepare")
      sha = manifest[f"{split}_sha256"]
  return TokenArray(arr, path, split, sha)


class MixtureTokens:
  """One split of several sources, drawn by weight: each sequence's source comes from a
  stateless block assignment, its window from that source's array."""

  def __init__(self, names: Sequence[str], arrays: Sequence[TokenArray],
               weights: Sequence[float], *, block: int = DEFAULT_BLOCK, path: str = "",
               split: str = "train"):
    self.names, self.arrays = list(names), list(arrays)
    self.weights, self.block = [float(w) for w in weights], int(block)
    self.path, self.split = path, split
    self._lens = np.array([len(a) for a in self.arrays], np.int64)
    self._assign: dict[tuple[int, tuple[int, ...]], Assignment] = {}

  def __len__(self) -> int:
    return int(self._lens.sum())

  def __repr__(self) -> str:
    return f"MixtureTokens({self.path!r}, {dict(zip(self.names, self.weights))})"

  @property
  def known_sha256(self) -> str | None:
    shas = [a.known_sha256 for a in self.arrays]
    if any(s is None for s in shas):
      return None
    return store.combined_sha256(list(zip(self.names, self.weights, shas)))

  @property
  def sha256(self) -> str:
    return store.combined_sha256([(n, w, a.sha256) for n, w, a in
                          zip(self.names, self.weights, self.arrays)])

  def require(self, n_tokens: int, why: str) -> None:
    for a in self.arrays:
      a.require(n_tokens, why)

  def assignment(self, seed: int, stream: tuple[int, ...]) -> Assignment:
    key = (int(seed), tuple(stream))
    if key not in self._assign:
      self._assign[key] = Assignment(self.weights, self.block, seed, stream)
    return self._assign[key]

  def documents(self) -> int:
    return sum(a.documents() for a in self.arrays)

  def batch_windows(self, seed: int, index: int, stream: tuple[int, ...], global_batch: int,
                    rows: slice, length: int, starts: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """As TokenArray's: each window read, and its document starts found, in its source."""
    src = self.assignment(seed, stream).sources(int(index) * global_batch, global_batch)
    rng = np.random.default_rng([seed, int(index), *stream])
    at = rng.integers(0, self._lens[src] - length + 1)
    src, at = src[rows], at[rows]
    out = np.empty((src.size, length), np.int32)
    doc = np.empty((src.size, length), bool) if starts else None
    for s in np.unique(src):
      sel = src == s
      out[sel] = self.arrays[int(s)].read_windows(at[sel], length)
      if doc is not None:
        doc[sel] = self.arrays[int(s)].document_starts(at[sel], length)
    return out, doc

  def describe(self) -> dict[str, Any]:
    return {"tokens": len(self), "data_sha256": self.known_sha256,
            "mixture": {"sources": self.names, "weights": self.weights, "block": self.block}}


TokenSet = TokenArray | MixtureTokens


def open_mixture(data_dir: str, manifest: dict[str, Any], split: str,
                 **kwargs: Any) -> MixtureTokens:
  """The split of every source a mixture manifest names (dirs relative to its root)."""
  names, arrays, weights = [], [], []
  for name, entry in manifest["sources"].items():
    src_dir = entry["dir"]
    if not (os.path.isabs(src_dir) or store.is_remote(src_dir)):
      src_dir = store.join(data_dir, src_dir)
    names.append(name)
    weights.append(entry["weight"])
    arrays.append(open_tokens(store.join(src_dir, split), **kwargs))
  return MixtureTokens(names, arrays, weights, block=manifest.get("mixture_block", DEFAULT_BLOCK),
                       path=data_dir, split=split)


def open_split(data_dir: str, split: str, **kwargs: Any) -> TokenSet:
  """open_tokens(data_dir/split) for split in ('train', 'val'), or, for a mixture's root dir,
  that split of every source."""
  if split not in store.SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {', '.join(store.SPLITS)}")
  try:
    manifest = store.load_manifest(data_dir)
  except DataError:
    manifest = None
  if manifest is not None and store.is_mixture(manifest):
    return open_mixture(data_dir, manifest, split, **kwargs)
  return open_tokens(store.join(data_dir, split), **kwargs)
