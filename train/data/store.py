"""The on-disk format of prepared data: zarr3 token arrays (local or gs:// / s3://) plus a
`manifest.json` that fingerprints them. Both the writer (`prepare`) and the reader
(`pipeline`) use this module, so the format is defined once.

A prepared dir holds, per split S in (train, val): `S` (the token ids, documents back to back,
each followed by the end-of-text id when the tokenizer has one) and `S_offsets` (int64, the
start of every document in `S` and, last, its length: Levanter's jagged layout). A mixture's
root dir holds only a manifest naming its sources' prepared dirs (`"kind": "mixture"`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Iterator

import numpy as np
import tensorstore as ts

from core import manifests
from core.checks import first_line
from core.errors import DataError

FORMAT_VERSION = 2


CHUNK_TOKENS = 65536


MANIFEST = "manifest.json"


SPLITS = ("train", "val")


OFFSETS = "_offsets"  # suffix of a split's document-offsets array


ARRAYS = (*SPLITS, *(s + OFFSETS for s in SPLITS))


_REMOTE = {"gs://": "gcs", "s3://": "s3"}


PREPARE_HINT = "run pregate-prepare --input=CORPUS --output_dir={dir}"


def is_remote(path: str) -> bool:
  return str(path).startswith(tuple(_REMOTE))


def join(base: str, name: str) -> str:
  """`base/name` for local paths and gs:// / s3:// URLs alike."""
  if is_remote(base):
    return str(base).rstrip("/") + "/" + name
  return os.path.join(base, name)


def kvstore_spec(path: str) -> dict[str, Any]:
  """Tensorstore kvstore for a directory: a local path, gs://bucket/p or s3://bucket/p."""
  path = str(path)
  for prefix, driver in _REMOTE.items():
    if path.startswith(prefix):
      bucket, _, key = path[len(prefix):].partition("/")
      if not bucket:
        raise DataError(f"storage path {path!r} names no bucket; write it as {prefix}BUCKET/PATH")
      key = key.strip("/")
      return {"driver": driver, "bucket": bucket, "path": key + "/" if key else ""}
  return {"driver": "file", "path": os.path.abspath(path) + "/"}


def token_dtype(vocab_size: int) -> str:
  """Smallest unsigned storage dtype for the ids: uint16 halves the bytes of every read."""
  return "uint16" if vocab_size <= 1 << 16 else "uint32"


def zarr3_spec(path: str, *, shape: int | None = None, dtype: str | None = None) -> dict[str, Any]:
  """Spec for a 1-D token array; with shape/dtype it creates one (raw little-endian chunks).

  Chunks are uncompressed: random window reads are the hot path and zstd made them ~2.5x
  slower (docs/stack-facts.md), while token files are small next to checkpoints.
  """
  spec: dict[str, Any] = {"driver": "zarr3", "kvstore": kvstore_spec(path)}
  if shape is not None:
    spec["metadata"] = {
        "shape": [shape], "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK_TOKENS]}},
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}
  return spec


class GrowingArray:
  """A 1-D zarr3 array written front to back, length unknown until the end: whole chunks are
  written as they fill (asynchronously, at most two writes in flight), the tail at `close`,
  then the array is shrunk to its length. Created at `MAX_LEN`, it is resized once, so its
  metadata is written twice however long it grows; the sha256 of the little-endian values is
  kept as they pass (what the manifest records)."""

  MAX_LEN = 1 << 40

  def __init__(self, path: str, dtype: str, flush_chunks: int = 16):
    self.path, self.dtype = path, np.dtype(dtype).newbyteorder("<")
    spec = zarr3_spec(path, shape=self.MAX_LEN, dtype=np.dtype(dtype).name)
    self._arr = ts.open(spec, create=True, delete_existing=True).result()
    self._buf: list[np.ndarray] = []
    self._buffered, self.length = 0, 0
    self._flush = flush_chunks * CHUNK_TOKENS
    self._sha = hashlib.sha256()
    self._writes: list[Any] = []

  def append(self, values: np.ndarray) -> None:
    v = np.ascontiguousarray(values, dtype=self.dtype)
    if not v.size:
      return
    self._sha.update(v.tobytes())
    self._buf.append(v)
    self._buffered += v.size
    if self._buffered >= self._flush:
      self._write(final=False)

  def _write(self, final: bool) -> None:
    data = np.concatenate(self._buf) if len(self._buf) > 1 else self._buf[0]
    n = data.size if final else data.size // CHUNK_TOKENS * CHUNK_TOKENS
    if n:
      self._writes.append(self._arr[self.length:self.length + n].write(data[:n]))
      self.length += n
    rest = data[n:]
    self._buf, self._buffered = ([rest] if rest.size else []), rest.size
    while len(self._writes) > 2:
      self._writes.pop(0).result()

  def close(self) -> tuple[int, str]:
    """(length, sha256) once every value is on disk and the array has its final shape."""
    if self._buffered:
      self._write(final=True)
    for w in self._writes:
      w.result()
    self._writes = []
    # Metadata only: no chunk lies past `length` (deleting would visit all 2^24 chunk keys).
    self._arr.resize(exclusive_max=[self.length], shrink_only=True,
                     resize_metadata_only=True).result()
    return self.length, self._sha.hexdigest()


def read_blocks(path: str, start: int, stop: int, block: int = CHUNK_TOKENS * 16
                ) -> Iterator[np.ndarray]:
  """Values [start, stop) of a 1-D array, a bounded block at a time."""
  arr = ts.open(zarr3_spec(path), open=True).result()
  for lo in range(start, stop, block):
    yield arr[lo:min(lo + block, stop)].read().result()


def delete_array(data_dir: str, name: str) -> None:
  """Remove an array (a local one with its directories, which a kvstore delete leaves)."""
  if is_remote(data_dir):
    kvstore(data_dir).delete_range(ts.KvStore.KeyRange(name + "/", name + "0")).result()
  else:
    shutil.rmtree(join(data_dir, name))


def kvstore(data_dir: str) -> ts.KvStore:
  return ts.KvStore.open(kvstore_spec(data_dir)).result()


_REQUIRED = ("format_version", "tokenizer", "vocab_size", "dtype", "source_sha256",
             "val_fraction", "train_tokens", "val_tokens", "train_sha256", "val_sha256")


def load_manifest(data_dir: str) -> dict[str, Any]:
  """The manifest of a prepared dir; refuses a missing, corrupt or other-version manifest."""
  hint = PREPARE_HINT.format(dir=data_dir)
  try:
    result = kvstore(data_dir).read(MANIFEST).result()
  except ValueError as e:
    reason = first_line(e)
    raise DataError(f"cannot read {join(data_dir, MANIFEST)} ({reason}); {hint}") from e
  if result.state != "value":
    raise DataError(f"{data_dir} is not a prepared data dir (no {MANIFEST}); {hint}")
  try:
    manifest = json.loads(bytes(result.value).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{join(data_dir, MANIFEST)} is not valid JSON ({e}); {hint}") from e
  if not isinstance(manifest, dict) or any(k not in manifest for k in _REQUIRED):
    raise DataError(f"{join(data_dir, MANIFEST)} lacks required fields; {hint}")
  if manifest["format_version"] != FORMAT_VERSION:
    raise DataError(f"{join(data_dir, MANIFEST)} has format_version "
                    f"{manifest['format_version']}, this code reads {FORMAT_VERSION}; {hint}")
  return manifest


def combined_sha256(parts: list[tuple[str, float, str]]) -> str:
  """One sha256 for several sources' (name, weight, sha256): a mixture's fingerprint."""
  return hashlib.sha256(";".join(f"{n}:{float(w)!r}:{s}" for n, w, s in parts).encode()
                        ).hexdigest()


def is_mixture(manifest: dict[str, Any]) -> bool:
  return manifest.get("kind") == "mixture"


def source_train_tokens(manifest: dict[str, Any]) -> dict[str, int]:
  """{source: unique train tokens} (the gate-side helper lives in core.manifests)."""
  return manifests.source_train_tokens(manifest)
