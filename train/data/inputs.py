"""Corpus inputs: which files a spec names, and the documents each file holds, streamed.

A spec is one or more comma-separated files, globs (`**` recurses) or directories (every file
under it with a known extension, hidden files skipped), in the order given, each glob or
directory sorted. Formats (by extension unless `fmt` says otherwise):
- `.txt`: the whole file is one document, or documents separated by `txt_separator`;
- `.jsonl`, `.jsonl.gz`, `.jsonl.zst`: one JSON object per line, text in `text_field`;
- `.parquet`: the `text_field` column, read one record batch at a time (pyarrow), never the
  whole file.
A path with `://` is opened through fsspec (memory://, file:// and whatever backend is
installed, e.g. gcsfs for gs://); nothing is downloaded otherwise. Every bad input is one
DataError line naming the file (and line or row) and the fix.
"""
from __future__ import annotations

import codecs
import dataclasses
import glob as globlib
import gzip
import hashlib
import io
import json
import os
import zlib
from typing import IO, Any, Iterator

from core.errors import DataError

FORMATS = ("auto", "txt", "jsonl", "parquet")
_SUFFIXES = ((".jsonl.gz", "jsonl", "gz"), (".jsonl.zst", "jsonl", "zst"),
             (".jsonl.zstd", "jsonl", "zst"), (".jsonl", "jsonl", ""), (".txt", "txt", ""),
             (".parquet", "parquet", ""), (".txt.gz", "txt", "gz"), (".txt.zst", "txt", "zst"))
_BLOCK = 1 << 22  # bytes read per step when a .txt file is split by a separator
_BATCH_ROWS = 1024  # Parquet rows per record batch


@dataclasses.dataclass(frozen=True)
class ReadOptions:
  """How files become documents (part of the prepared data's settings)."""

  fmt: str = "auto"
  text_field: str = "text"
  txt_separator: str = ""

  def check(self) -> ReadOptions:
    if self.fmt not in FORMATS:
      raise DataError(f"data.format={self.fmt!r} is not one of {', '.join(FORMATS)}")
    if not isinstance(self.text_field, str) or not self.text_field:
      raise DataError("data.text_field must name the JSONL field / Parquet column holding the "
                      "text, e.g. 'text'")
    if not isinstance(self.txt_separator, str):
      raise DataError(f"data.txt_separator must be a string ('' = one document per .txt "
                      f"file), got {self.txt_separator!r}")
    return self


@dataclasses.dataclass(frozen=True)
class InputFile:
  path: str
  fmt: str  # txt | jsonl | parquet
  compression: str  # '' | gz | zst
  size: int


def is_remote(path: str) -> bool:
  return "://" in path


def _fs(url: str) -> tuple[Any, str]:
  """(fsspec filesystem, path) for a URL, or one line saying why it cannot be opened."""
  try:
    import fsspec
    return fsspec.core.url_to_fs(url)
  except (ImportError, ValueError) as e:
    raise DataError(f"cannot open {url} ({str(e).splitlines()[0][:160]}); install the fsspec "
                    "backend for that scheme, or copy the files to a local path") from None


def _kind(path: str, fmt: str) -> tuple[str, str] | None:
  """(format, compression) of a file name, or None when the extension is not known."""
  name = path.lower()
  for suffix, f, comp in _SUFFIXES:
    if name.endswith(suffix):
      return (f if fmt == "auto" else fmt), comp
  if fmt != "auto":
    return fmt, "gz" if name.endswith(".gz") else "zst" if name.endswith(".zst") else ""
  return None


def _expand_one(item: str) -> list[tuple[str, int, bool]]:
  """(path, size, named explicitly) for one spec item: a file, glob or directory."""
  if is_remote(item):
    fs, path = _fs(item)
    url = fs.unstrip_protocol
    if globlib.has_magic(path):
      found = sorted(fs.glob(path))
      return [(url(p), fs.size(p), False) for p in found if fs.isfile(p)]
    if fs.isdir(path):
      return [(url(p), fs.size(p), False) for p in sorted(fs.find(path))]
    if fs.isfile(path):
      return [(item, fs.size(path), True)]
    raise DataError(f"corpus {item} does not exist; check the URL")
  if globlib.has_magic(item):
    found = sorted(p for p in globlib.glob(item, recursive=True) if os.path.isfile(p))
    return [(p, os.path.getsize(p), False) for p in found]
  if os.path.isdir(item):
    out = []
    for root, dirs, files in os.walk(item):
      dirs[:] = sorted(d for d in dirs if not d.startswith("."))
      out += [os.path.join(root, f) for f in files if not f.startswith(".")]
    return [(p, os.path.getsize(p), False) for p in sorted(out)]
  if not os.path.exists(item):
    raise DataError(f"corpus file {item} does not exist; point data.corpus (or --input) at a "
                    "file, directory or glob")
  if not os.path.isfile(item):
    raise DataError(f"corpus path {item} is not a regular file or directory; point the corpus "
                    "at text files")
  return [(item, os.path.getsize(item), True)]


def resolve(spec: str, fmt: str = "auto") -> list[InputFile]:
  """The files of a spec, in order, each once; refuses globs and directories that match
  nothing, unknown extensions and empty files (stat only: nothing is read)."""
  items = [s.strip() for s in str(spec).split(",") if s.strip()]
  if not items:
    raise DataError("no corpus given; set data.corpus (or --input) to files, a directory or a "
                    "glob")
  out: dict[str, InputFile] = {}
  for item in items:
    found = _expand_one(item)
    known = [(p, size, kind) for p, size, named in found
             if (kind := _kind(p, fmt)) is not None or named]
    if not known:
      what = "glob" if globlib.has_magic(item) else "directory"
      raise DataError(f"corpus {what} {item} matches no .txt/.jsonl[.gz|.zst]/.parquet files; "
                      "fix the pattern or the path")
    for p, size, kind in known:
      if kind is None:
        raise DataError(f"corpus file {p} has an unknown extension; name it .txt, .jsonl, "
                        ".jsonl.gz, .jsonl.zst or .parquet, or set data.format")
      if size == 0:
        raise DataError(f"corpus file {p} is empty (0 bytes); remove it or point the corpus "
                        "at files with text in them")
      out.setdefault(p, InputFile(p, kind[0], kind[1], size))
  return list(out.values())


def _open_raw(f: InputFile) -> IO[bytes]:
  try:
    if is_remote(f.path):
      fs, path = _fs(f.path)
      return fs.open(path, "rb")
    return open(f.path, "rb")
  except OSError as e:
    raise DataError(f"corpus file {f.path} cannot be read ({e.strerror or e}); check its "
                    "permissions") from None


def file_sha256(f: InputFile) -> str:
  """sha256 of the file's bytes as stored (compressed files: the compressed bytes)."""
  h = hashlib.sha256()
  with _open_raw(f) as raw:
    while block := raw.read(1 << 22):
      h.update(block)
  return h.hexdigest()


def _decompressed(f: InputFile, raw: IO[bytes]) -> IO[bytes]:
  if f.compression == "gz":
    return gzip.GzipFile(fileobj=raw, mode="rb")
  if f.compression == "zst":
    import zstandard
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=False))
  return raw


def _decode_error(f: InputFile, e: UnicodeDecodeError, base: int = 0) -> DataError:
  return DataError(f"corpus file {f.path} is not valid UTF-8 (bad byte at offset "
                   f"{base + e.start}); re-encode it to UTF-8")


def _txt_documents(f: InputFile, stream: IO[bytes], sep: str) -> Iterator[str]:
  if not sep:
    raw = stream.read()
    nul = raw.find(b"\x00")
    if nul >= 0:
      raise DataError(f"corpus file {f.path} is not text (NUL byte at offset {nul}); point the "
                      "corpus at UTF-8 text files")
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise _decode_error(f, e) from None
    if not text.strip():
      raise DataError(f"corpus file {f.path} holds only whitespace ({len(raw)} bytes); point "
                      "the corpus at files with some text in them")
    yield text
    return
  decoder, carry, offset = codecs.getincrementaldecoder("utf-8")(), "", 0
  while True:
    block = stream.read(_BLOCK)
    nul = block.find(b"\x00")
    if nul >= 0:
      raise DataError(f"corpus file {f.path} is not text (NUL byte at offset {offset + nul}); "
                      "point the corpus at UTF-8 text files")
    try:
      carry += decoder.decode(block, final=not block)
    except UnicodeDecodeError as e:
      raise _decode_error(f, e, offset) from None
    offset += len(block)
    parts = carry.split(sep)
    carry = parts.pop() if block else ""
    yield from (p for p in parts if p)
    if not block:
      if carry:
        yield carry
      return


def _jsonl_documents(f: InputFile, stream: IO[bytes], field: str) -> Iterator[str]:
  for lineno, line in enumerate(stream, 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except UnicodeDecodeError as e:
      raise DataError(f"{f.path}:{lineno} is not valid UTF-8 ({e.reason}); re-encode the file "
                      "to UTF-8") from None
    except json.JSONDecodeError as e:
      raise DataError(f"{f.path}:{lineno} is not a JSON object ({e.msg} at column {e.colno}); "
                      "fix or remove that line") from None
    if not isinstance(obj, dict) or field not in obj:
      keys = ", ".join(list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
      raise DataError(f"{f.path}:{lineno} has no {field!r} field (found: {keys}); set "
                      "data.text_field to the field holding the text")
    text = obj[field]
    if not isinstance(text, str):
      raise DataError(f"{f.path}:{lineno}: field {field!r} is {type(text).__name__}, not a "
                      "string; set data.text_field to a text field")
    if text:
      yield text


def _parquet_documents(f: InputFile, stream: IO[bytes], column: str) -> Iterator[str]:
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    pf = pq.ParquetFile(stream)
  except (pa.ArrowException, OSError) as e:
    raise DataError(f"corpus file {f.path} is not a readable Parquet file "
                    f"({str(e).splitlines()[0][:160]}); check the file") from None
  schema = pf.schema_arrow
  if column not in schema.names:
    raise DataError(f"Parquet file {f.path} has no column {column!r} (columns: "
                    f"{', '.join(schema.names[:8])}); set data.text_field to the text column")
  kind = schema.field(column).type
  if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
          or pa.types.is_string_view(kind)):
    raise DataError(f"Parquet column {column!r} of {f.path} is {kind}, not a string; set "
                    "data.text_field to a text column")
  row = 0
  for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=[column]):
    values = batch.column(0)
    if values.null_count:
      bad = row + int(values.is_null().to_numpy(zero_copy_only=False).argmax())
      raise DataError(f"Parquet file {f.path} row {bad}: column {column!r} is null; drop rows "
                      "without text")
    row += len(values)
    yield from (t for t in values.to_pylist() if t)


def documents(f: InputFile, opts: ReadOptions) -> Iterator[str]:
  """The file's non-empty documents in order, streamed (one .txt without a separator is read
  whole: it is one document)."""
  with _open_raw(f) as raw:
    stream = _decompressed(f, raw)
    try:
      if f.fmt == "txt":
        yield from _txt_documents(f, stream, opts.txt_separator)
      elif f.fmt == "jsonl":
        yield from _jsonl_documents(f, stream, opts.text_field)
      else:
        yield from _parquet_documents(f, stream, opts.text_field)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
      raise DataError(f"corpus file {f.path} cannot be decompressed ({e}); check the file") \
          from None
    except Exception as e:
      if type(e).__name__ == "ZstdError":
        raise DataError(f"corpus file {f.path} cannot be decompressed ({e}); check the file") \
            from None
      raise
