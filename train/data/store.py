"""The on-disk format of prepared data: zarr3 token arrays (local or gs:// / s3://) plus a
`manifest.json` that fingerprints them. Both the writer (`prepare`) and the reader
(`pipeline`) use this module, so the format is defined once."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np
import tensorstore as ts

from core.checks import first_line
from core.errors import DataError

FORMAT_VERSION = 1


CHUNK_TOKENS = 65536


MANIFEST = "manifest.json"


SPLITS = ("train", "val")


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
  slower (BUILD_NOTES, stack facts), while token files are small next to checkpoints.
  """
  spec: dict[str, Any] = {"driver": "zarr3", "kvstore": kvstore_spec(path)}
  if shape is not None:
    spec["metadata"] = {
        "shape": [shape], "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [CHUNK_TOKENS]}},
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}]}
  return spec


def tokens_sha256(tokens: np.ndarray, dtype: str) -> str:
  """sha256 of the ids' little-endian bytes in storage dtype (what the manifest records)."""
  return hashlib.sha256(np.asarray(tokens).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
                        ).hexdigest()


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
