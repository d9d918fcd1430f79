"""Tokenize a corpus once into train/val token arrays (tensorstore zarr3), document offsets and a
manifest.

Two streaming passes over the documents (`train.data.inputs`), so memory stays bounded whatever
the corpus size:
1. scan: every file is read and checked (bad input is refused here, before anything is
   written), documents are counted, and the tokenizer is built (char vocabulary, or a BPE
   trained on the training documents);
2. tokenize: units of ~1M characters go, in order, to 1 (in-process) or N spawned worker
   processes (`train.data.encode`); results come back in submission order and are appended at
   the running offsets, so 1 and N workers write byte-identical arrays and manifests.
The manifest records the inputs' sha256, the settings, the tokenizer (full JSON) and the
tokens' hashes, so a run reuses a prepared dir only when it was made from the same bytes with
the same settings. A local dir is built beside its destination and renamed into place (the
manifest written last), so an interruption never leaves a complete-looking dir.

  pregate-prepare --input=data/tinyshakespeare.txt --output_dir=/tmp/shakespeare \
      --val_split=tail --eot_token=          # nanoGPT's data: one document, vocab 65
  pregate-prepare --input='shards/*.jsonl.zst' --output_dir=/tmp/web --tokenizer=bpe \
      --bpe_vocab_size=32768 --workers=8
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import tempfile
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from core.errors import DataError
from core.progress import Progress
from train.data import bpe, encode, inputs, staging, store, writer
from train.data.spec import DataSpec
from train.data.tokenizer import ByteTokenizer, CharTokenizer, Tokenizer

UNIT_CHARS = 1 << 20  # characters per unit of tokenization work
UNIT_DOCS = 4096
# A spawned worker costs ~1 s to start: each must get at least this many units, so a small
# corpus (Tiny Shakespeare: 2 units) is tokenized in-process.
UNITS_PER_WORKER = 8


def read_corpus(path: str) -> tuple[str, str, int]:
  """(text, sha256, size in bytes) of one UTF-8 text file (the char tokenizer's corpus)."""
  f = inputs.resolve(path, "txt")[0]
  text = next(inputs.documents(f, inputs.ReadOptions("txt")))
  return text, inputs.file_sha256(f), f.size


@dataclasses.dataclass
class Fingerprint:
  """The inputs' files and sha256s; `sha256` names the bytes (a single file: its own sha)."""

  spec: str
  files: list[inputs.InputFile]
  shas: list[str]

  @property
  def sha256(self) -> str:
    if len(self.shas) == 1:
      return self.shas[0]
    return hashlib.sha256("\n".join(self.shas).encode()).hexdigest()

  @classmethod
  def of(cls, corpus: str, fmt: str) -> Fingerprint:
    files = inputs.resolve(corpus, fmt)
    return cls(corpus, files, [inputs.file_sha256(f) for f in files])


@dataclasses.dataclass
class Scan:
  """Pass 1's counts for one source (per file: documents and characters)."""

  documents: list[int]
  chars: list[int]
  train_documents: int = 0
  val_documents: int = 0


def _held_out(spec: DataSpec) -> float | None:
  return spec.val_fraction if spec.val_split == "documents" else None


def scan(groups: list[tuple[Fingerprint, DataSpec]], tokenizer: Tokenizer | None = None
         ) -> tuple[list[Scan], Tokenizer]:
  """Pass 1 over one or more sources sharing one tokenizer (the first spec's settings):
  validate and count every document, and build the tokenizer unless one is given."""
  spec = groups[0][1]
  scans = [Scan([0] * len(fp.files), [0] * len(fp.files)) for fp, _ in groups]
  total = sum(f.size for fp, _ in groups for f in fp.files)
  progress = Progress("scanning", total)

  def docs() -> Iterator[tuple[str, bool]]:
    for sc, (fp, gspec) in zip(scans, groups):
      vf = _held_out(gspec)
      for i, f in enumerate(fp.files):
        for doc in inputs.documents(f, gspec.read_options()):
          held = vf is not None and encode.is_val_document(doc, vf)
          sc.documents[i] += 1
          sc.chars[i] += len(doc)
          sc.val_documents += held
          sc.train_documents += not held
          yield doc, held
        if not sc.documents[i]:
          raise DataError(f"corpus file {f.path} holds no documents (every text is empty); "
                          "remove it or fix data.text_field")
        progress.update(f.size)

  if tokenizer is not None:
    collections.deque(docs(), maxlen=0)
  elif spec.tokenizer == "char":
    tokenizer = _char_vocab((d for d, _ in docs()), spec.eot)
  elif spec.tokenizer == "byte":
    collections.deque(docs(), maxlen=0)
    tokenizer = ByteTokenizer(spec.eot)
  elif spec.tokenizer_json:
    tokenizer = bpe.load(spec.tokenizer_json, spec.eot_token)
    collections.deque(docs(), maxlen=0)
  else:
    tokenizer = bpe.train((d for d, held in docs() if not held), spec.bpe_vocab_size,
                          spec.eot_token, bpe.parse_special_tokens(spec.special_tokens))
  progress.close()
  for sc, (fp, gspec) in zip(scans, groups):
    _check_split(sc, fp.spec, gspec)
  return scans, tokenizer


def _char_vocab(docs: Iterator[str], eot: str | None) -> CharTokenizer:
  points: set[int] = set()
  for doc in docs:
    points.update(np.unique(np.frombuffer(doc.encode("utf-32-le", "surrogatepass"), "<u4"))
                  .tolist())
  return CharTokenizer("".join(chr(p) for p in sorted(points)), eot)


def _check_split(sc: Scan, corpus: str, spec: DataSpec) -> None:
  n = sum(sc.documents)
  if spec.val_split != "documents":
    return
  fix = ("whole documents are held out by content hash; raise val_fraction, add documents, or "
         "set data.val_split='tail' (or data.txt_separator to split .txt files)")
  if not sc.val_documents:
    raise DataError(f"val_fraction={spec.val_fraction} held out none of the {n:,} document(s) "
                    f"of {corpus}; {fix}")
  if not sc.train_documents:
    raise DataError(f"val_fraction={spec.val_fraction} held out all {n:,} document(s) of "
                    f"{corpus}, leaving none to train on; lower val_fraction or add documents")


def _units(fp: Fingerprint, opts: inputs.ReadOptions) -> Iterator[tuple[int, list[str], int]]:
  """(file index, documents, characters): the work units, the same for any worker count."""
  for i, f in enumerate(fp.files):
    docs, chars = [], 0
    for doc in inputs.documents(f, opts):
      docs.append(doc)
      chars += len(doc)
      if chars >= UNIT_CHARS or len(docs) >= UNIT_DOCS:
        yield i, docs, chars
        docs, chars = [], 0
    if docs:
      yield i, docs, chars


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
  """One worker means one core: keep the tokenizers library's own thread pool off."""
  old = os.environ.get("TOKENIZERS_PARALLELISM")
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  try:
    yield
  finally:
    if old is None:
      os.environ.pop("TOKENIZERS_PARALLELISM", None)
    else:
      os.environ["TOKENIZERS_PARALLELISM"] = old


def _tokenizer_file(tmp: str, tok: Tokenizer) -> str:
  path = os.path.join(tmp, "tokenizer.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(tok.to_json(), f)
  return path


def _run_units(fp: Fingerprint, spec: DataSpec, tok: Tokenizer, dtype: str, workers: int,
               sink: Callable[[int, encode.Encoded, int], None]) -> None:
  units, vf = _units(fp, spec.read_options()), _held_out(spec)
  if workers <= 1:
    with _single_threaded():
      for i, docs, chars in units:
        sink(i, encode.encode_docs(tok, docs, dtype, vf), chars)
    return
  # Spawned, never forked (a fork of a process running tensorstore threads can deadlock); an
  # executor, not multiprocessing.Pool, so a worker that dies fails the preparation instead of
  # leaving it waiting forever.
  if getattr(multiprocessing.current_process(), "_inheriting", False):
    raise RuntimeError("prepare(workers > 1) ran while a spawned worker imported the main "
                       "module; guard the calling script with if __name__ == '__main__'")
  ctx = multiprocessing.get_context("spawn")
  pending: collections.deque = collections.deque()
  # The tokenizer goes by file: spawn writes initargs into a pipe the child may never read
  # (it died importing main), and a payload over the pipe buffer then blocks for ever.
  with tempfile.TemporaryDirectory(prefix="pregate-tok-") as tmp, futures.ProcessPoolExecutor(
      workers, mp_context=ctx, initializer=encode.init_worker,
      initargs=(_tokenizer_file(tmp, tok), dtype, vf)) as pool:
    try:
      for i, docs, chars in units:
        pending.append((i, chars, pool.submit(encode.encode_unit, docs)))
        if len(pending) >= 2 * workers:  # bounded: at most 2 units per worker in flight
          i0, c0, result = pending.popleft()
          sink(i0, result.result(), c0)
      while pending:
        i0, c0, result = pending.popleft()
        sink(i0, result.result(), c0)
    except futures.process.BrokenProcessPool as e:
      raise RuntimeError(f"a tokenizing worker process died ({e}); nothing was published. "
                         "If this is a script, guard it with if __name__ == '__main__'") from None
    finally:
      for _, _, result in pending:
        result.cancel()


def _fill(data_dir: str, fp: Fingerprint, spec: DataSpec, tok: Tokenizer, workers: int,
          sc: Scan) -> tuple[dict[str, dict[str, Any]], list[int]]:
  """Pass 2: tokenize into data_dir's arrays; -> per-split results and tokens per file."""
  dtype, table = store.token_dtype(tok.vocab_size), tok.token_bytes()
  per_file = [0] * len(fp.files)
  progress = Progress("tokenizing", sum(sc.chars), unit="char")
  docs_split = spec.val_split == "documents"
  names = store.SPLITS if docs_split else (writer.ALL,)
  writers = {s: writer.SplitWriter(data_dir, s, dtype, table) for s in names}

  def sink(i: int, enc: encode.Encoded, chars: int) -> None:
    per_file[i] += enc.tokens.size
    if docs_split:
      mask = np.repeat(enc.is_val, enc.lengths)
      writers["train"].add_docs(enc.tokens[~mask], enc.lengths[~enc.is_val])
      writers["val"].add_docs(enc.tokens[mask], enc.lengths[enc.is_val])
    else:
      writers[writer.ALL].add_docs(enc.tokens, enc.lengths)
    progress.update(chars, enc.tokens.size)

  workers = min(workers, max(1, math.ceil(sum(sc.chars) / (UNITS_PER_WORKER * UNIT_CHARS))))
  try:
    _run_units(fp, spec, tok, dtype, workers, sink)
  finally:
    progress.close()
  if docs_split:
    return {s: w.close() for s, w in writers.items()}, per_file
  splits = writer.split_tail(data_dir, writers[writer.ALL], spec.val_fraction, dtype, table)
  return splits, per_file


def _manifest(fp: Fingerprint, spec: DataSpec, tok: Tokenizer, sc: Scan,
              splits: dict[str, dict[str, Any]], per_file: list[int], name: str,
              tokenizer_json_sha: str | None) -> dict[str, Any]:
  counts = {f"{s}_{k}": splits[s][k] for s in store.SPLITS
            for k in ("tokens", "documents", "bytes")}
  return {
      "format_version": store.FORMAT_VERSION, "kind": "corpus",
      "tokenizer": tok.to_json(), "tokenizer_fingerprint": tok.fingerprint(),
      "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
      "dtype": store.token_dtype(tok.vocab_size), "chunk_tokens": store.CHUNK_TOKENS,
      "source_path": ",".join(f.path if inputs.is_remote(f.path) else os.path.abspath(f.path)
                              for f in fp.files) if len(fp.files) == 1 else fp.spec,
      "source_sha256": fp.sha256, "source_bytes": sum(f.size for f in fp.files),
      "settings": spec.settings(tokenizer_json_sha),
      "val_fraction": float(spec.val_fraction), "val_split": spec.val_split,
      "documents": sum(sc.documents), **counts,
      "train_sha256": splits["train"]["sha256"], "val_sha256": splits["val"]["sha256"],
      "files": [{"path": f.path, "sha256": sha, "bytes": f.size, "documents": d, "tokens": t}
                for f, sha, d, t in zip(fp.files, fp.shas, sc.documents, per_file)],
      "sources": {name: {"source_sha256": fp.sha256, **counts}},
  }


def tokenizer_json_sha(spec: DataSpec) -> str | None:
  return bpe.read_tokenizer_json(spec.tokenizer_json)[1] if spec.tokenizer_json else None


def _spec(tokenizer_kind: str, val_fraction: float, spec: DataSpec | None,
          fields: dict[str, Any]) -> DataSpec:
  if spec is None:
    spec = DataSpec(tokenizer=tokenizer_kind, val_fraction=val_fraction, **fields)
  return spec.check()


def prepare(input_path: str, output_dir: str, tokenizer_kind: str = "char",
            val_fraction: float = 0.1, *, spec: DataSpec | None = None,
            tokenizer: Tokenizer | None = None, workers: int = 1, name: str = "corpus",
            fingerprint: Fingerprint | None = None, **fields: Any) -> dict[str, Any]:
  """Tokenize the inputs into `output_dir` (arrays + manifest.json); returns the manifest.

  `spec` (or tokenizer_kind, val_fraction and `fields` of DataSpec) says how; `tokenizer`
  forces a tokenizer (a mixture's shared one); `workers` tokenizing processes."""
  spec = _spec(tokenizer_kind, val_fraction, spec, fields)
  fp = fingerprint or Fingerprint.of(input_path, spec.format)
  (sc,), tok = scan([(fp, spec)], tokenizer)
  tj_sha = tokenizer_json_sha(spec)

  def fill(data_dir: str) -> dict[str, Any]:
    splits, per_file = _fill(data_dir, fp, spec, tok, workers, sc)
    return _manifest(fp, spec, tok, sc, splits, per_file, name, tj_sha)

  if store.is_remote(output_dir):
    return staging.write_dir(output_dir, fill)
  reuse_if = dict(source_sha256=fp.sha256, settings=spec.settings(tj_sha),
                  tokenizer_fingerprint=tokenizer.fingerprint() if tokenizer else None)
  return staging.write_local_atomic(Path(output_dir).absolute(), fill, reuse_if)


def ensure_prepared(corpus: str, data_dir: str, tokenizer_kind: str = "char",
                    val_fraction: float = 0.1, *, spec: DataSpec | None = None,
                    tokenizer: Tokenizer | None = None, workers: int = 1,
                    name: str = "corpus", **fields: Any) -> dict[str, Any]:
  """Reuse `data_dir` when its manifest matches the inputs' bytes and settings, else prepare."""
  spec = _spec(tokenizer_kind, val_fraction, spec, fields)
  fp = Fingerprint.of(corpus, spec.format)
  existing = staging.reusable_manifest(
      data_dir, source_sha256=fp.sha256, settings=spec.settings(tokenizer_json_sha(spec)),
      tokenizer_fingerprint=tokenizer.fingerprint() if tokenizer else None)
  if existing is not None:
    return existing
  return prepare(corpus, data_dir, spec=spec, tokenizer=tokenizer, workers=workers, name=name,
                 fingerprint=fp)


def summary(manifest: dict[str, Any], data_dir: str) -> str:
  """A few human-readable lines describing a prepared dir."""
  eos = manifest.get("eos_id")
  return "\n".join([
      f"prepared {data_dir}: {manifest['tokenizer']['type']} tokenizer, vocab "
      f"{manifest['vocab_size']}, {manifest['dtype']} tokens, end-of-text id "
      f"{'none' if eos is None else eos}",
      f"  source {manifest.get('source_path')} ({len(manifest.get('files', []))} file(s), "
      f"{manifest.get('source_bytes', 0):,} bytes, sha256 {manifest['source_sha256'][:16]})",
      f"  train {manifest['train_tokens']:,} tokens in {manifest.get('train_documents', 0):,} "
      f"document(s) (sha256 {manifest['train_sha256'][:16]})",
      f"  val   {manifest['val_tokens']:,} tokens in {manifest.get('val_documents', 0):,} "
      f"document(s) (sha256 {manifest['val_sha256'][:16]}), val_fraction "
      f"{manifest['val_fraction']}, split by {manifest.get('val_split', 'tail')}",
  ])


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """First (1 - val_fraction) of a token stream for training, the rest held out (the `tail`
  split, nanoGPT's); stamping's held-out text and the gate's unique-token count use it."""
  n = len(tokens)
  n_train = int(n * (1.0 - val_fraction))
  if n - n_train < 1 or n_train < 1:
    raise DataError(f"val_fraction={val_fraction} of {n} tokens leaves an empty split; change "
                    "val_fraction or use a larger corpus")
  return tokens[:n_train], tokens[n_train:]
