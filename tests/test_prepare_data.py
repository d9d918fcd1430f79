"""prepare_data: the nanoGPT split, whole-document validation, manifest hashes, reuse/redo,
atomicity and clear refusals."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

import helpers
from core.errors import DataError
from train.data import prepare as pd
from train.data import store, writer
from train.data import tokenizer as tk

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "data" / "tinyshakespeare.txt"
SHAKESPEARE_SHA = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TAIL = {"eot_token": "", "val_split": "tail"}  # nanoGPT's data (configs/shakespeare_char.py)
SEP = "\n\n"
DOCS = [f"document {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13} times"
        for i in range(60)]


def _read_split(data_dir, split) -> np.ndarray:
  """Read a stored array with plain tensorstore (independent of train.data)."""
  store = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(data_dir / split)}},
                  open=True).result()
  return store.read().result()


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
  out = tmp_path_factory.mktemp("prep") / "shakespeare"
  return out, pd.prepare(str(SHAKESPEARE), str(out), "char", 0.1, **TAIL)


TEXT = SEP.join(DOCS)


def _corpus(tmp_path, text=TEXT, name="c.txt"):
  p = tmp_path / name
  p.write_text(text, encoding="utf-8")
  return p


def _prep(corpus, out, kind="char", vf=0.1, **kw):
  """Whole-document preparation of a separator-split .txt corpus."""
  return pd.ensure_prepared(str(corpus), str(out), kind, vf, txt_separator=SEP, **kw)


def test_nanogpt_split_counts(shakespeare):
  _, m = shakespeare
  assert (m["train_tokens"], m["val_tokens"]) == (1_003_854, 111_540)
  assert m["vocab_size"] == 65 and m["dtype"] == "uint16"
  assert m["source_sha256"] == SHAKESPEARE_SHA and m["source_bytes"] == 1_115_394
  assert m["val_fraction"] == 0.1 and m["format_version"] == store.FORMAT_VERSION
  assert (m["train_documents"], m["val_documents"], m["eos_id"]) == (1, 1, None)
  assert m["val_split"] == "tail" and m["sources"]["corpus"]["train_tokens"] == 1_003_854


def test_manifest_hashes_match_stored_tokens(shakespeare):
  out, m = shakespeare
  on_disk = json.loads((out / "manifest.json").read_text())
  assert on_disk == m
  text = SHAKESPEARE.read_text("utf-8")
  tok = tk.tokenizer_from_json(m["tokenizer"])
  for split, expected in (("train", text[:1_003_854]), ("val", text[1_003_854:])):
    stored = _read_split(out, split)
    assert stored.dtype == np.uint16 and stored.shape == (m[f"{split}_tokens"],)
    assert hashlib.sha256(stored.astype("<u2").tobytes()).hexdigest() == m[f"{split}_sha256"]
    assert tok.decode(stored) == expected
  assert m["train_sha256"] != m["val_sha256"]
  for split in ("train", "val"):
    assert _read_split(out, split + "_offsets").tolist() == [0, m[f"{split}_tokens"]]


def test_no_temp_dirs_left_behind(shakespeare):
  out, _ = shakespeare
  assert os.listdir(out.parent) == [out.name]
  assert sorted(os.listdir(out)) == ["manifest.json", "train", "train_offsets", "val",
                                     "val_offsets"]


def test_byte_tokenizer_counts_utf8_bytes(tmp_path):
  text = "naïve café — ünïcödé\n" * 20
  m = pd.prepare(str(_corpus(tmp_path, text)), str(tmp_path / "out"), "byte", 0.25, **TAIL)
  n = len(text.encode("utf-8"))
  assert m["train_tokens"] + m["val_tokens"] == n and m["val_tokens"] == n - int(n * 0.75)
  assert m["tokenizer"] == {"type": "byte"} and m["vocab_size"] == 256
  both = np.concatenate([_read_split(tmp_path / "out", s) for s in ("train", "val")])
  assert both.tobytes() == np.frombuffer(text.encode(), np.uint8).astype("<u2").tobytes()


def test_token_dtype_widens_past_uint16():
  assert store.token_dtype(65) == "uint16" and store.token_dtype(65_536) == "uint16"
  assert store.token_dtype(65_537) == "uint32"


def test_whole_documents_held_out_each_followed_by_end_of_text(tmp_path):
  m = _prep(_corpus(tmp_path), tmp_path / "out")
  tok = tk.tokenizer_from_json(m["tokenizer"])
  assert m["eos_id"] == tok.eos_id == tok.vocab_size - 1 and m["documents"] == len(DOCS)
  got = {}
  for split in ("train", "val"):
    ids, offs = _read_split(tmp_path / "out", split), _read_split(tmp_path / "out",
                                                                 split + "_offsets")
    assert offs[0] == 0 and offs[-1] == len(ids) == m[f"{split}_tokens"]
    assert len(offs) - 1 == m[f"{split}_documents"]
    assert (ids[offs[1:] - 1] == tok.eos_id).all()  # every document ends with end-of-text
    got[split] = [tok.decode(ids[a:b - 1]) for a, b in zip(offs[:-1], offs[1:])]
  assert sorted(got["train"] + got["val"]) == sorted(DOCS)  # whole documents, none split
  assert m["val_documents"] == len(got["val"]) >= 1 and not set(got["train"]) & set(got["val"])
  again = pd.prepare(str(tmp_path / "c.txt"), str(tmp_path / "again"), "char", 0.1,
                     txt_separator=SEP)
  assert again["val_sha256"] == m["val_sha256"]  # the hold-out is deterministic


def test_reuse_when_unchanged_redo_when_source_changes(tmp_path):
  corpus, out = _corpus(tmp_path), tmp_path / "data"
  m1 = _prep(corpus, out)
  stamp = (out / "manifest.json").stat().st_mtime_ns, out.stat().st_ino
  m2 = _prep(corpus, out)
  assert m2 == m1
  assert ((out / "manifest.json").stat().st_mtime_ns, out.stat().st_ino) == stamp
  corpus.write_text(SEP.join(d.replace("fox", "XYZ fox") for d in DOCS), encoding="utf-8")
  m3 = _prep(corpus, out)
  assert m3["source_sha256"] != m1["source_sha256"]
  assert m3["train_sha256"] != m1["train_sha256"]
  assert json.loads((out / "manifest.json").read_text()) == m3
  assert "X" in tk.tokenizer_from_json(m3["tokenizer"]).vocab


@pytest.mark.parametrize("kind,val_fraction", [("byte", 0.1), ("char", 0.2)])
def test_redo_when_settings_change(tmp_path, kind, val_fraction):
  corpus, out = _corpus(tmp_path), tmp_path / "data"
  m1 = _prep(corpus, out, "char", 0.1)
  m2 = _prep(corpus, out, kind, val_fraction)
  assert m2 != m1 and m2["tokenizer"]["type"] == kind and m2["val_fraction"] == val_fraction
  assert _prep(corpus, out, kind, val_fraction, eot_token="") != m2  # the end-of-text too


def test_redo_when_manifest_missing_or_array_gone(tmp_path):
  corpus, out = _corpus(tmp_path), tmp_path / "data"
  m1 = _prep(corpus, out)
  (out / "manifest.json").unlink()
  assert _prep(corpus, out) == m1
  assert (out / "manifest.json").exists()
  for name in ("val", "train_offsets"):
    for f in (out / name).rglob("*"):
      if f.is_file():
        f.unlink()
    assert _prep(corpus, out) == m1
  assert _read_split(out, "val").shape == (m1["val_tokens"],)


def test_crash_mid_write_keeps_old_data(tmp_path, monkeypatch):
  corpus, out = _corpus(tmp_path), tmp_path / "data"
  m1 = _prep(corpus, out)
  before = helpers.snapshot(out)
  corpus.write_text(SEP.join(d.upper() for d in DOCS), encoding="utf-8")
  real = writer.SplitWriter.close

  def crash_on_val(self):
    if self.tokens.path.endswith("val"):
      raise RuntimeError("simulated crash")
    return real(self)

  monkeypatch.setattr(writer.SplitWriter, "close", crash_on_val)
  with pytest.raises(RuntimeError):
    _prep(corpus, out)
  assert store.load_manifest(str(out)) == m1  # old dir intact, still self-consistent
  assert helpers.snapshot(out) == before
  assert sorted(os.listdir(tmp_path)) == ["c.txt", "data"]  # temp dir removed


def test_refuses_to_replace_unrelated_directory(tmp_path):
  out = tmp_path / "not_data"
  out.mkdir()
  (out / "notes.txt").write_text("keep me")
  with pytest.raises(DataError, match="other files"):
    _prep(_corpus(tmp_path), out)
  assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"), (b"", "empty"), (b"  \n\t \n", "only whitespace"),
    (b"text\x00more", "NUL"), (b"caf\xe9 latin-1", "not valid UTF-8")])
def test_bad_corpus_is_one_line_data_error(tmp_path, content, needle):
  path = tmp_path / "corpus.txt"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(DataError) as e:
    pd.prepare(str(path), str(tmp_path / "out"))
  msg = str(e.value)
  assert needle in msg and str(path) in msg and "\n" not in msg
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("vf,needle,split", [
    (0.0, "outside (0, 1)", "tail"), (1.0, "outside (0, 1)", "tail"),
    (-0.5, "outside (0, 1)", "tail"), (float("nan"), "outside", "tail"),
    ("0.1", "must be a number", "tail"), (1e-17, "no validation", "tail"),
    (0.999, "no training", "tail"), (1e-17, "held out none", "documents"),
    (0.999999, "held out all", "documents")])
def test_bad_val_fraction(tmp_path, vf, needle, split):
  with pytest.raises(DataError, match=needle.replace("(", r"\(").replace(")", r"\)")) as e:
    pd.prepare(str(_corpus(tmp_path, "abcdefghij" * 10)), str(tmp_path / "out"), "char", vf,
               val_split=split, txt_separator="j")
  assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_load_manifest_refuses_unprepared_and_corrupt(tmp_path):
  with pytest.raises(DataError, match="not a prepared data dir"):
    store.load_manifest(str(tmp_path))
  (tmp_path / "manifest.json").write_text("{not json")
  with pytest.raises(DataError, match="not valid JSON"):
    store.load_manifest(str(tmp_path))


def test_remote_kvstore_specs_are_valid():
  gcs = store.kvstore_spec("gs://my-bucket/runs/data/")
  assert gcs == {"driver": "gcs", "bucket": "my-bucket", "path": "runs/data/"}
  s3 = store.kvstore_spec(store.join("s3://my-bucket/d", "train"))
  assert s3 == {"driver": "s3", "bucket": "my-bucket", "path": "d/train/"}
  for spec in (gcs, s3):
    assert ts.KvStore.Spec(spec).to_json() == spec  # tensorstore accepts them as written
  ts.Spec(store.zarr3_spec("gs://my-bucket/d/train", shape=10, dtype="uint16"))
  assert store.kvstore_spec("rel/dir")["path"] == os.path.abspath("rel/dir") + "/"
  with pytest.raises(DataError, match="names no bucket"):
    store.kvstore_spec("gs:///x")


