"""Tokenize a text corpus once into train/val token arrays (tensorstore zarr3) plus a manifest.

The manifest records the source's sha256, the tokenizer and the tokens' hashes, so a run can
reuse a prepared dir only when it was made from the same bytes with the same settings, and a
checkpoint can name exactly which data it saw. The manifest is written last and a local dir is
built beside its destination and renamed into place, so a crash never leaves a complete-looking
half-written dir.

  python -m train.prepare_data --input=data/tinyshakespeare.txt --output_dir=/tmp/shakespeare
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts
from absl import app
from absl import flags

from gates.errors import DataError
from train import tokenizer as tokenizer_lib

FORMAT_VERSION = 1
CHUNK_TOKENS = 65536
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
_REMOTE = {"gs://": "gcs", "s3://": "s3"}
_PREPARE_HINT = "run python -m train.prepare_data --input=CORPUS --output_dir={dir}"


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
  slower (STACK_NOTES §7), while token files are small next to checkpoints.
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
  if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
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
  spec = zarr3_spec(path, shape=len(tokens), dtype=dtype)
  store = ts.open(spec, create=True, delete_existing=True).result()
  store.write(tokens.astype(dtype)).result()


def _kvstore(data_dir: str) -> ts.KvStore:
  return ts.KvStore.open(kvstore_spec(data_dir)).result()


def _write_dir(data_dir: str, splits: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
  """Arrays first, manifest last: a dir without a manifest is never taken as prepared."""
  kv = _kvstore(data_dir)
  kv.delete_range(ts.KvStore.KeyRange(MANIFEST, MANIFEST + "\0")).result()
  for name, tokens in splits.items():
    _write_array(join(data_dir, name), tokens, manifest["dtype"])
  kv.write(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=True).encode()).result()


def _check_replaceable(out: Path) -> None:
  """Refuse to replace a directory that holds anything but a prepared data dir."""
  if not out.exists():
    return
  if not out.is_dir():
    raise DataError(f"data dir {out} exists and is not a directory; choose a new directory")
  extra = sorted(set(os.listdir(out)) - {*SPLITS, MANIFEST})
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
  dtype = token_dtype(tok.vocab_size)
  manifest = {
      "format_version": FORMAT_VERSION,
      "tokenizer": tok.to_json(),
      "tokenizer_fingerprint": tok.fingerprint(),
      "vocab_size": tok.vocab_size,
      "dtype": dtype,
      "chunk_tokens": CHUNK_TOKENS,
      "source_path": os.path.abspath(input_path),
      "source_sha256": source_sha,
      "source_bytes": source_bytes,
      "val_fraction": val_fraction,
      "train_tokens": len(train),
      "val_tokens": len(val),
      "train_sha256": tokens_sha256(train, dtype),
      "val_sha256": tokens_sha256(val, dtype),
  }
  splits = {"train": train, "val": val}
  if is_remote(output_dir):
    _write_dir(output_dir, splits, manifest)
    return manifest
  reuse_if = dict(source_sha256=source_sha, tokenizer_kind=tokenizer_kind,
                  val_fraction=val_fraction)
  return _write_local_atomic(Path(output_dir).absolute(), splits, manifest, reuse_if)


_REQUIRED = ("format_version", "tokenizer", "vocab_size", "dtype", "source_sha256",
             "val_fraction", "train_tokens", "val_tokens", "train_sha256", "val_sha256")


def load_manifest(data_dir: str) -> dict[str, Any]:
  """The manifest of a prepared dir; refuses a missing, corrupt or other-version manifest."""
  hint = _PREPARE_HINT.format(dir=data_dir)
  try:
    result = _kvstore(data_dir).read(MANIFEST).result()
  except ValueError as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
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


def _arrays_match(data_dir: str, manifest: dict[str, Any]) -> bool:
  """Cheap completeness check (metadata only): both arrays exist with the recorded lengths."""
  for name in SPLITS:
    try:
      store = ts.open(zarr3_spec(join(data_dir, name)), open=True).result()
    except ValueError:
      return False
    if store.shape != (manifest[f"{name}_tokens"],) or store.dtype.name != manifest["dtype"]:
      return False
  return True


def _reusable_manifest(data_dir: str, *, source_sha256: str, tokenizer_kind: str,
                       val_fraction: float) -> dict[str, Any] | None:
  """The existing manifest if it was made from these bytes with these settings, else None."""
  try:
    manifest = load_manifest(data_dir)
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    print(f"ERROR: unexpected arguments {argv[1:]}; pass only --flags", file=sys.stderr)
    sys.exit(2)
  f = flags.FLAGS
  try:
    manifest = prepare(f.input, f.output_dir, f.tokenizer, f.val_fraction)
  except DataError as e:
    print("ERROR: " + " ".join(str(e).split()), file=sys.stderr)
    sys.exit(e.exit_code)
  print(summary(manifest, f.output_dir))


def _define_flags() -> None:
  """Defined only when run as a script, so importing this module adds no global flags."""
  flags.DEFINE_string("input", None, "UTF-8 text corpus to tokenize.")
  flags.DEFINE_string("output_dir", None, "Directory (or gs://, s3:// URL) to write into.")
  flags.DEFINE_enum("tokenizer", "char", list(tokenizer_lib.KINDS), "Tokenizer kind.")
  flags.DEFINE_float("val_fraction", 0.1, "Fraction of tokens (the tail) held out for val.")
  flags.mark_flags_as_required(["input", "output_dir"])


def run() -> None:
  """Console-script entry point."""
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
