"""Inputs: the same documents as .txt, .jsonl, .jsonl.gz, .jsonl.zst and .parquet (and through
directories, globs, several files and memory:// URLs) give identical token arrays."""
import gzip
import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorstore as ts
import zstandard

from core.errors import DataError
from train.data import inputs, prepare, store

SEP = "\n\n"
DOCS = [f"Doc {i} — ünïcödé {'abc' * (i % 5)} end.\nsecond line {i}" for i in range(80)]


def write_formats(root, docs=DOCS, rows_per_group=7):
  """The documents in every supported format; -> {format: path}."""
  root.mkdir(parents=True, exist_ok=True)
  lines = "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs))
  paths = {"txt": root / "c.txt", "jsonl": root / "c.jsonl", "jsonl.gz": root / "c.jsonl.gz",
           "jsonl.zst": root / "c.jsonl.zst", "parquet": root / "c.parquet"}
  paths["txt"].write_text(SEP.join(docs), encoding="utf-8")
  paths["jsonl"].write_text(lines, encoding="utf-8")
  paths["jsonl.gz"].write_bytes(gzip.compress(lines.encode()))
  paths["jsonl.zst"].write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
  pq.write_table(pa.table({"id": list(range(len(docs))), "text": docs}), paths["parquet"],
                 row_group_size=rows_per_group)
  return paths


def arrays(data_dir):
  out = {}
  for name in store.ARRAYS:
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(data_dir / name)}}
    out[name] = ts.open(spec, open=True).result().read().result()
  return out


def _same(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
  return write_formats(tmp_path_factory.mktemp("formats"))


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_every_format_gives_identical_arrays(formats, tmp_path, kind):
  got, manifests = {}, {}
  for fmt, path in formats.items():
    manifests[fmt] = prepare.prepare(str(path), str(tmp_path / fmt), kind, 0.2,
                                     txt_separator=SEP)
    got[fmt] = arrays(tmp_path / fmt)
  for fmt in formats:
    _same(got["txt"], got[fmt])
    for key in ("train_sha256", "val_sha256", "train_documents", "val_documents",
                "tokenizer_fingerprint", "train_bytes", "val_bytes"):
      assert manifests[fmt][key] == manifests["txt"][key], (fmt, key)
  m = manifests["parquet"]
  assert m["documents"] == len(DOCS) and m["files"][0]["documents"] == len(DOCS)
  assert m["train_bytes"] + m["val_bytes"] == len("".join(DOCS).encode())


def test_parquet_is_read_in_record_batches(formats, monkeypatch):
  seen = []
  real = pq.ParquetFile.iter_batches

  def spy(self, *a, **kw):
    seen.append((kw.get("batch_size"), kw.get("columns")))
    return real(self, *a, **kw)

  monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
  f = inputs.resolve(str(formats["parquet"]))[0]
  assert list(inputs.documents(f, inputs.ReadOptions())) == DOCS
  assert seen == [(inputs._BATCH_ROWS, ["text"])]  # one column, bounded batches


def test_directory_glob_and_list_resolve_in_order(tmp_path):
  half = len(DOCS) // 2
  a = write_formats(tmp_path / "d" / "a", DOCS[:half])
  b = write_formats(tmp_path / "d" / "b", DOCS[half:])
  (tmp_path / "d" / "README.md").write_text("not a corpus file")
  (tmp_path / "d" / ".hidden.jsonl").write_text("{broken")
  one = prepare.prepare(str(formats_file(tmp_path)), str(tmp_path / "one"), "byte", 0.2,
                        txt_separator=SEP)
  listed = prepare.prepare(f"{a['jsonl.zst']},{b['parquet']}", str(tmp_path / "listed"),
                           "byte", 0.2)
  globbed = prepare.prepare(str(tmp_path / "d" / "*" / "c.jsonl.gz"), str(tmp_path / "glob"),
                            "byte", 0.2)
  _same(arrays(tmp_path / "one"), arrays(tmp_path / "listed"))
  _same(arrays(tmp_path / "one"), arrays(tmp_path / "glob"))
  assert listed["val_sha256"] == one["val_sha256"] == globbed["val_sha256"]
  assert [f["documents"] for f in listed["files"]] == [half, len(DOCS) - half]
  whole_dir = prepare.prepare(str(tmp_path / "d"), str(tmp_path / "dir"), "byte", 0.2,
                              txt_separator=SEP)
  assert len(whole_dir["files"]) == 10 and whole_dir["documents"] == 5 * len(DOCS)


def formats_file(tmp_path):
  p = tmp_path / "all.txt"
  p.write_text(SEP.join(DOCS), encoding="utf-8")
  return p


def test_remote_looking_paths_open_through_fsspec(formats, tmp_path):
  fs = fsspec.filesystem("memory")
  fs.pipe("/corpus/part-0.jsonl.zst", formats["jsonl.zst"].read_bytes())
  fs.pipe("/corpus/part-1.parquet", formats["parquet"].read_bytes())
  try:
    m = prepare.prepare("memory:///corpus/part-*", str(tmp_path / "remote"), "byte", 0.2)
  finally:
    fs.rm("/corpus", recursive=True)
  assert [f["path"] for f in m["files"]] == ["memory:///corpus/part-0.jsonl.zst",
                                             "memory:///corpus/part-1.parquet"]
  assert m["documents"] == 2 * len(DOCS)
  local = prepare.prepare(str(formats["jsonl"]), str(tmp_path / "local"), "byte", 0.2)
  assert m["train_tokens"] == 2 * local["train_tokens"]


def test_unknown_scheme_is_one_clear_line(tmp_path):
  with pytest.raises(DataError) as e:
    prepare.prepare("nosuchscheme://bucket/data.jsonl", str(tmp_path / "x"), "byte", 0.2)
  msg = str(e.value)
  assert "nosuchscheme://bucket/data.jsonl" in msg and "\n" not in msg
  assert "copy the files to a local path" in msg and not (tmp_path / "x").exists()


@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_txt_separator_split_is_independent_of_read_blocks(tmp_path, monkeypatch, block):
  text = "\n\n".join(DOCS[:12]) + "\n\n\n\nlast — ünï\n"
  path = tmp_path / "c.txt"
  path.write_text(text, encoding="utf-8")
  monkeypatch.setattr(inputs, "_BLOCK", block)  # separators and UTF-8 sequences cut anywhere
  f = inputs.resolve(str(path))[0]
  got = list(inputs.documents(f, inputs.ReadOptions(txt_separator="\n\n")))
  assert got == [d for d in text.split("\n\n") if d]
