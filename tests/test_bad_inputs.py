"""Every bad input is refused the same way: exit 2, one `ERROR:` line naming the problem, no
traceback, no XLA compile, and the workdir exactly as it was (absent stays absent). One row per
input; the rows that reach the loop (data, vocabulary, mesh) run against an existing workdir
holding a file, so any write there shows up."""

import os
import subprocess

import pytest
import test_main_cli

import helpers

pytestmark = pytest.mark.e2e


PASSING = test_main_cli.PASSING  # long enough that the Chinchilla gate passes unbypassed

# id: (overrides, extra flags, workdir kind, words the ERROR line must contain). "{tmp}" is
# the test's tmp dir; the corpus files named there are written by the test.
ROWS = {
    "d_model_not_divisible_by_n_heads": (
        {"model.d_model": 30, "model.n_heads": 4}, [], "new", ["d_model=30", "n_heads=4"]),
    "n_heads_not_divisible_by_n_kv_heads": (
        {"model.n_heads": 4, "model.n_kv_heads": 3}, [], "new", ["n_kv_heads", "n_heads"]),
    "seq_len_above_max_seq_len": (
        {"batch.seq_len": 256, "model.max_seq_len": 128}, [], "new",
        ["seq_len=256", "max_seq_len=128"]),
    "zero_train_steps": ({"train_steps": 0}, [], "new", ["train_steps", "> 0"]),
    "negative_global_batch": (
        {"batch.global_batch": -4}, [], "new", ["global_batch", "> 0", "-4"]),
    "zero_lr": ({"optimizer.lr": 0.0}, [], "new", ["optimizer.lr", "> 0"]),
    "negative_lr": ({"optimizer.lr": -1e-3}, [], "new", ["optimizer.lr", "> 0"]),
    "warmup_longer_than_training": (
        {"schedule.warmup_steps": 2001}, [], "new", ["warmup_steps=2001", "train_steps=2000"]),
    "unknown_config_field": ({}, ["--config.model.n_layerz=2"], "new", ["n_layerz"]),
    "wrong_type_for_field": ({"batch.global_batch": "four"}, [], "new", ["global_batch"]),
    "corpus_missing": (
        {"data.data_dir": "", "data.corpus": "{tmp}/missing.txt"}, [], "new",
        ["DataError", "missing.txt", "does not exist"]),
    "corpus_empty": (
        {"data.data_dir": "", "data.corpus": "{tmp}/empty.txt"}, [], "new",
        ["DataError", "empty.txt", "empty"]),
    "corpus_not_text": (
        {"data.data_dir": "", "data.corpus": "{tmp}/blob.txt"}, [], "existing",
        ["DataError", "blob.txt", "not text"]),
    # A split shorter than one window: the val split (a 20-byte corpus would be refused first
    # by the Chinchilla gate, v1.2.0: 18 unique tokens cannot feed any model 20 N effective).
    "split_shorter_than_a_window": (
        {"data.data_dir": "{tmp}/tiny-prepared", "data.corpus": str(helpers.CORPUS),
         "data.tokenizer": "byte", "data.val_fraction": 0.00001, "model.vocab_size": 256,
         "train_steps": 5000}, [], "existing", ["DataError", "val split", "seq_len"]),
    "tokenizer_vocab_mismatch": (
        {"model.vocab_size": 64}, [], "existing", ["DataError", "65", "vocab_size=64"]),
    "init_path_missing": ({}, ["--init={tmp}/no-such-run"], "new", ["--init", "no-such-run"]),
    "workdir_is_a_file": ({}, [], "file", ["is a file"]),
    "workdir_not_writable": ({}, [], "readonly", ["not writable"]),
    "mesh_not_matching_devices": ({"mesh.data": 3}, [], "existing", ["mesh", "devices"]),
    "cpu_devices_negative": (
        {"mesh.cpu_devices": -1}, [], "new", ["mesh.cpu_devices=-1", ">= 0"]),
    "eval_batch_not_divisible_by_mesh": (
        {"mesh.cpu_devices": 2, "eval.batch_size": 3}, [], "existing",
        ["eval.batch_size=3", "data x fsdp = 2"]),
}

CORPORA = {"empty.txt": b"", "blob.txt": b"some text\n" * 100 + b"\x00\x01\x02\xff" * 64}


def _workdir(tmp_path, kind):
  """The workdir of a row: absent, or existing (a dir holding a file, or a file)."""
  if kind == "new":
    return tmp_path / "run"
  if kind == "file":
    path = tmp_path / "a-file"
    path.write_bytes(b"not a directory\n")
    return path
  path = tmp_path / "run"
  path.mkdir()
  (path / "notes.txt").write_text("someone's files\n")
  if kind == "readonly":
    _make_read_only(path)
  return path


def _make_read_only(path):
  """A directory the test user cannot write into, whoever it is: as root (CI) permission bits do
  not stop writes, so the directory becomes a read-only bind mount of itself (a read-only
  filesystem stops root too); otherwise mode 0o500 does."""
  if os.geteuid() != 0:
    path.chmod(0o500)
    return
  subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
  subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
  assert not os.access(path, os.W_OK), f"{path} is still writable after a read-only bind"


def _undo_read_only(path):
  if os.geteuid() != 0:
    path.chmod(0o700)
  else:
    subprocess.run(["umount", str(path)], check=True, capture_output=True)


def _state(path):
  if not path.exists():
    return None
  return path.read_bytes() if path.is_file() else helpers.snapshot(path)


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_refused_cleanly(prepared_data, tmp_path, row):
  overrides, extra, kind, needles = ROWS[row]
  for name, data in CORPORA.items():
    (tmp_path / name).write_bytes(data)
  fill = lambda v: v.format(tmp=tmp_path) if isinstance(v, str) else v
  workdir = _workdir(tmp_path, kind)
  before = _state(workdir)
  try:
    res = helpers.run_main(
        *helpers.tiny_flags(prepared_data, {**PASSING, **{k: fill(v) for k, v in
                                                          overrides.items()}}),
        *map(fill, extra), workdir=workdir, count_compiles=True)
  finally:
    if kind == "readonly":
      _undo_read_only(workdir)
  helpers.assert_one_line_error(res, *map(fill, needles))
  assert res.compiles == 0, f"{res.compiles} XLA compiles before refusing"
  assert _state(workdir) == before, "the refused run changed its workdir"
