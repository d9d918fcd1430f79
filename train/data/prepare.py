"""Tokenize a text corpus once into train/val token arrays (tensorstore zarr3) plus a manifest.

The manifest records the source's sha256, the tokenizer and the tokens' hashes, so a run can
reuse a prepared dir only when it was made from the same bytes with the same settings, and a
checkpoint can name exactly which data it saw. The manifest is written last and a local dir is
built beside its destination and renamed into place, so a crash never leaves a complete-looking
half-written dir.

  pregate-prepare --input=data/tinyshakespeare.txt --output_dir=/tmp/shakespeare
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from core.checks import is_number
from core.errors import DataError
from train.data import store
from train.data import tokenizer as tokenizer_lib


def read_corpus(path: str) -> tuple[str, str, int]:
  """(text, sha256, size in bytes) of a UTF-8 corpus; refuses missing, empty and binary files."""
  fix = "point the corpus at a UTF-8 text file"
  p = Path(path)
  if not p.exists():
    raise DataError(f"corpus file {path} does not exist; {fix} (--config.data.corpus / --input)")
  if not p.is_file():
    raise DataError(f"corpus path {path} is not a regular file; {fix}")
  try:
    raw = p.read_bytes()
  except OSError as e:
    raise DataError(f"corpus file {path} cannot be read ({e.strerror}); {fix} you can read") from e
  if not raw:
    raise DataError(f"corpus file {path} is empty (0 bytes); {fix} with some text in it")
  nul = raw.find(b"\x00")
  if nul >= 0:
    raise DataError(f"corpus file {path} is not text (NUL byte at offset {nul}); {fix}")
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"corpus file {path} is not valid UTF-8 (bad byte at offset {e.start}); "
                    f"{fix}, or re-encode it to UTF-8") from e
  if not text.strip():
    raise DataError(f"corpus file {path} holds only whitespace ({len(raw)} bytes); {fix} with "
                    "some text in it")
  return text, hashlib.sha256(raw).hexdigest(), len(raw)


def _check_val_fraction(val_fraction: float) -> float:
  if not is_number(val_fraction):
    raise DataError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}; use e.g. 0.1")
  if not 0.0 < val_fraction < 1.0:
    raise DataError(f"val_fraction={val_fraction} is outside (0, 1); use a fraction such as 0.1")
  return float(val_fraction)


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """First (1 - val_fraction) of the tokens train, the rest val (nanoGPT's split)."""
  n = len(tokens)
  n_train = int(n * (1.0 - val_fraction))
  if n - n_train < 1:
    raise DataError(f"val_fraction={val_fraction} of {n} tokens leaves no validation tokens; "
                    "raise val_fraction or use a larger corpus")
  if n_train < 1:
    raise DataError(f"val_fraction={val_fraction} of {n} tokens leaves no training tokens; "
                    "lower val_fraction or use a larger corpus")
  return tokens[:n_train], tokens[n_train:]


def _write_array(path: str, tokens: np.ndarray, dtype: str) -> None:
  spec = store.zarr3_spec(path, shape=len(tokens), dtype=dtype)
  arr = ts.open(spec, create=True, delete_existing=True).result()
  arr.write(tokens.astype(dtype)).result()



def _write_dir(data_dir: str, splits: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
  """Arrays first, manifest last: a dir without a manifest is never taken as prepared."""
  kv = store.kvstore(data_dir)
  kv.delete_range(ts.KvStore.KeyRange(store.MANIFEST, store.MANIFEST + "\0")).result()
  for name, tokens in splits.items():
    _write_array(store.join(data_dir, name), tokens, manifest["dtype"])
  kv.write(store.MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=True).encode()).result()


def _check_replaceable(out: Path) -> None:
  """Refuse to replace a directory that holds anything but a prepared data dir."""
  if not out.exists():
    return
  if not out.is_dir():
    raise DataError(f"data dir {out} exists and is not a directory; choose a new directory")
  extra = sorted(set(os.listdir(out)) - {*store.SPLITS, store.MANIFEST})
  if extra:
    raise DataError(f"data dir {out} already holds other files (e.g. {extra[0]!r}); choose a new "
                    "or empty directory for prepared data")


def _write_local_atomic(out: Path, splits: dict[str, np.ndarray], manifest: dict[str, Any],
                        reuse_if: dict[str, Any]) -> dict[str, Any]:
  """Build in a temp dir beside `out`, then rename it into place."""
  out.parent.mkdir(parents=True, exist_ok=True)
  _check_replaceable(out)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
  try:
    _write_dir(str(tmp), splits, manifest)
    if out.exists():
      old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
      os.rename(out, old)
      shutil.rmtree(old, ignore_errors=True)
    try:
      os.rename(tmp, out)
    except OSError:
      # Another process (e.g. another host of this run) renamed its copy in first.
      theirs = _reusable_manifest(str(out), **reuse_if)
      if theirs is None:
        raise DataError(f"data dir {out} was replaced while preparing it; re-run so only one "
                        "process prepares the data") from None
      return theirs
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return manifest


def prepare(input_path: str, output_dir: str, tokenizer_kind: str = "char",
            val_fraction: float = 0.1) -> dict[str, Any]:
  """Tokenize `input_path` into `output_dir`/{train,val,manifest.json}; returns the manifest."""
  val_fraction = _check_val_fraction(val_fraction)
  if tokenizer_kind not in tokenizer_lib.KINDS:
    raise DataError(f"unknown tokenizer kind {tokenizer_kind!r}; use one of "
                    f"{', '.join(tokenizer_lib.KINDS)}")
  text, source_sha, source_bytes = read_corpus(input_path)
  tok = tokenizer_lib.build_tokenizer(tokenizer_kind, text)
  train, val = split_tokens(tok.encode(text), val_fraction)
  dtype = store.token_dtype(tok.vocab_size)
  manifest = {
      "format_version": store.FORMAT_VERSION,
      "tokenizer": tok.to_json(),
      "tokenizer_fingerprint": tok.fingerprint(),
      "vocab_size": tok.vocab_size,
      "dtype": dtype,
      "chunk_tokens": store.CHUNK_TOKENS,
      "source_path": os.path.abspath(input_path),
      "source_sha256": source_sha,
      "source_bytes": source_bytes,
      "val_fraction": val_fraction,
      "train_tokens": len(train),
      "val_tokens": len(val),
      "train_sha256": store.tokens_sha256(train, dtype),
      "val_sha256": store.tokens_sha256(val, dtype),
  }
  splits = {"train": train, "val": val}
  if store.is_remote(output_dir):
    _write_dir(output_dir, splits, manifest)
    return manifest
  reuse_if = dict(source_sha256=source_sha, tokenizer_kind=tokenizer_kind,
                  val_fraction=val_fraction)
  return _write_local_atomic(Path(output_dir).absolute(), splits, manifest, reuse_if)



def _arrays_match(data_dir: str, manifest: dict[str, Any]) -> bool:
  """Cheap completeness check (metadata only): both arrays exist with the recorded lengths."""
  for name in store.SPLITS:
    try:
      arr = ts.open(store.zarr3_spec(store.join(data_dir, name)), open=True).result()
    except ValueError:
      return False
    if arr.shape != (manifest[f"{name}_tokens"],) or arr.dtype.name != manifest["dtype"]:
      return False
  return True


def _reusable_manifest(data_dir: str, *, source_sha256: str, tokenizer_kind: str,
                       val_fraction: float) -> dict[str, Any] | None:
  """The existing manifest if it was made from these bytes with these settings, else None."""
  try:
    manifest = store.load_manifest(data_dir)
  except DataError:
    return None
  same = (manifest["source_sha256"] == source_sha256
          and manifest["tokenizer"].get("type") == tokenizer_kind
          and manifest["val_fraction"] == val_fraction)
  return manifest if same and _arrays_match(data_dir, manifest) else None


def ensure_prepared(corpus: str, data_dir: str, tokenizer_kind: str = "char",
                    val_fraction: float = 0.1) -> dict[str, Any]:
  """Reuse `data_dir` when its manifest matches the corpus bytes and settings, else prepare."""
  val_fraction = _check_val_fraction(val_fraction)
  _, source_sha, _ = read_corpus(corpus)
  existing = _reusable_manifest(data_dir, source_sha256=source_sha,
                                tokenizer_kind=tokenizer_kind, val_fraction=val_fraction)
  if existing is not None:
    return existing
  return prepare(corpus, data_dir, tokenizer_kind, val_fraction)


def summary(manifest: dict[str, Any], data_dir: str) -> str:
  """A few human-readable lines describing a prepared dir."""
  return "\n".join([
      f"prepared {data_dir}: {manifest['tokenizer']['type']} tokenizer, vocab "
      f"{manifest['vocab_size']}, {manifest['dtype']} tokens",
      f"  source {manifest.get('source_path')} ({manifest.get('source_bytes', 0):,} bytes, "
      f"sha256 {manifest['source_sha256'][:16]})",
      f"  train {manifest['train_tokens']:,} tokens (sha256 {manifest['train_sha256'][:16]})",
      f"  val   {manifest['val_tokens']:,} tokens (sha256 {manifest['val_sha256'][:16]}), "
      f"val_fraction {manifest['val_fraction']}",
  ])
