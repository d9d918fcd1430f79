"""Batching: determinism by seed, exact resume (incl. orbax), process sharding, early errors."""
import json
import shutil

import grain
import numpy as np
import pytest

from core.errors import DataError, PregateError
from train.data import pipeline as data
from train.data import prepare as pd
from train.data import store

B, T = 6, 16


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipe")
  rng = np.random.default_rng(123)
  text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz .,\n"), size=20_000))
  (root / "corpus.txt").write_text(text, encoding="utf-8")
  pd.prepare(str(root / "corpus.txt"), str(root / "data"), "char", 0.1, eot_token="",
             val_split="tail")
  return root / "data"


@pytest.fixture(scope="module")
def train_arr(prepared):
  return data.open_split(str(prepared), "train")


@pytest.fixture(scope="module")
def all_tokens(train_arr):
  return train_arr.read()


def _iter(arr, seed=0, n=50, **kw):
  return data.make_train_iter(arr, global_batch=B, seq_len=T, seed=seed, num_batches=n, **kw)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_open_tokens_reads_manifest_and_matches_storage(prepared, train_arr, all_tokens):
  m = store.load_manifest(str(prepared))
  assert len(train_arr) == m["train_tokens"] and train_arr.split == "train"
  assert train_arr.known_sha256 == m["train_sha256"]
  assert all_tokens.dtype == np.int32 and all_tokens.max() < m["vocab_size"]
  starts = np.array([0, 5, len(train_arr) - T - 1])
  windows = train_arr.read_windows(starts, T + 1)
  np.testing.assert_array_equal(windows, np.stack([all_tokens[s:s + T + 1] for s in starts]))
  with pytest.raises(IndexError):
    train_arr.read_windows(np.array([len(train_arr) - T]), T + 1)


def test_sha_computed_without_manifest_equals_manifest(prepared, tmp_path):
  shutil.copytree(prepared / "train", tmp_path / "copy")
  arr = data.open_tokens(str(tmp_path / "copy"))
  assert arr.known_sha256 is None
  assert arr.sha256 == store.load_manifest(str(prepared))["train_sha256"]


def test_open_missing_array_is_data_error(tmp_path):
  with pytest.raises(DataError, match="pregate-prepare"):
    data.open_tokens(str(tmp_path / "nope" / "train"))


def test_source_is_a_grain_random_access_source(train_arr):
  src = data.BatchSource(train_arr, global_batch=B, seq_len=T, seed=0, num_batches=7)
  assert isinstance(src, grain.sources.RandomAccessDataSource) and len(src) == 7
  assert "seed=0" in repr(src)
  with pytest.raises(IndexError):
    src[7]


def test_batches_are_windows_of_the_data_and_targets_shift(train_arr, all_tokens):
  src = data.BatchSource(train_arr, global_batch=B, seq_len=T, seed=3, num_batches=5)
  for i in range(5):
    batch = src[i]
    assert batch["inputs"].shape == batch["targets"].shape == (B, T)
    assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    for row, s in enumerate(src.global_starts(i)):
      np.testing.assert_array_equal(batch["inputs"][row], all_tokens[s:s + T])
      np.testing.assert_array_equal(batch["targets"][row], all_tokens[s + 1:s + T + 1])


def test_deterministic_by_seed(train_arr):
  a, b = _take(_iter(train_arr, 0), 5), _take(_iter(train_arr, 0), 5)
  c = _take(_iter(train_arr, 1), 5)
  assert _same(a, b)
  assert not any(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c))
  assert not np.array_equal(a[0]["inputs"], a[1]["inputs"])


def test_iterator_batch_i_is_source_item_i(train_arr):
  src = data.BatchSource(train_arr, global_batch=B, seq_len=T, seed=4, num_batches=6)
  assert _same(_take(_iter(train_arr, 4, n=6), 6), [src[i] for i in range(6)])


def test_stops_after_num_batches(train_arr):
  assert len(list(_iter(train_arr, n=4))) == 4


@pytest.mark.parametrize("threads,prefetch", [(0, 0), (1, 2), (2, 4)])
def test_resume_exactly_from_state(train_arr, threads, prefetch):
  full = _take(_iter(train_arr, 7, num_threads=threads, prefetch=prefetch), 10)
  it = _iter(train_arr, 7, num_threads=threads, prefetch=prefetch)
  _take(it, 4)
  state = json.loads(json.dumps(it.get_state()))  # must survive a JSON round trip
  assert state["next_index"] == 4
  resumed = _iter(train_arr, 7, num_threads=threads, prefetch=prefetch)
  resumed.set_state(state)
  assert _same(_take(resumed, 6), full[4:])


def test_resume_into_a_different_pipeline_is_refused(train_arr):
  it = _iter(train_arr, 0)
  next(it)
  other = _iter(train_arr, 1)
  with pytest.raises(DataError, match="seed"):
    other.set_state(it.get_state())
  longer = _iter(train_arr, 0, n=500)  # only num_batches changed: same batches, so allowed
  longer.set_state(it.get_state())
  assert _same([next(longer)], [data.BatchSource(train_arr, global_batch=B, seq_len=T, seed=0,
                                                  num_batches=2)[1]])


def test_resume_through_orbax_checkpoint_manager(train_arr, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  full = _take(_iter(train_arr, 5), 8)
  it = _iter(train_arr, 5)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mgr:
    mgr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
  _take(it, 2)  # progress after the save must not leak into the checkpoint
  fresh = _iter(train_arr, 5)
  with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mgr:
    restored = mgr.restore(mgr.latest_step(),
                           args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  assert restored["data"] is fresh and fresh.get_state()["next_index"] == 3
  assert _same(_take(fresh, 5), full[3:])


def test_process_slices_concatenate_to_the_global_batch(train_arr):
  whole = _take(_iter(train_arr, 2), 3)
  parts = [_take(_iter(train_arr, 2, process_index=p, process_count=2), 3) for p in range(2)]
  for i in range(3):
    for key in ("inputs", "targets"):
      assert parts[0][i][key].shape == (B // 2, T)
      np.testing.assert_array_equal(np.concatenate([parts[0][i][key], parts[1][i][key]]),
                                    whole[i][key])


def test_batch_not_divisible_by_processes(train_arr):
  with pytest.raises(PregateError, match="not divisible"):
    _iter(train_arr, process_count=4)


def test_too_short_split_names_split_and_counts(prepared):
  val = data.open_split(str(prepared), "val")
  n = len(val)
  with pytest.raises(DataError) as e:
    data.BatchSource(val, global_batch=2, seq_len=n, seed=0, num_batches=1)
  msg = str(e.value)
  assert "val split" in msg and f"{n:,} tokens" in msg and f"at least {n + 1:,}" in msg
  assert "\n" not in msg
  edge = data.BatchSource(val, global_batch=2, seq_len=n - 1, seed=0, num_batches=1)[0]
  np.testing.assert_array_equal(edge["inputs"][0], val.read(0, n - 1))  # the one window fits


def test_eval_batches_fixed_reproducible_and_not_training_batches(prepared, train_arr):
  val = data.open_split(str(prepared), "val")
  b1, desc = data.eval_batches(val, batch_size=4, seq_len=T, n_batches=3, seed=0)
  b2, _ = data.eval_batches(val, batch_size=4, seq_len=T, n_batches=3, seed=0)
  assert len(b1) == 3 and _same(b1, b2)
  assert desc["sha256"] == store.load_manifest(str(prepared))["val_sha256"]
  assert _same(data.reproduce_eval_batches(val, json.loads(json.dumps(desc))), b1)
  same_seed_train = data.BatchSource(val, global_batch=4, seq_len=T, seed=0, num_batches=3)
  assert not any(np.array_equal(b1[i]["inputs"], same_seed_train[i]["inputs"]) for i in range(3))
  with pytest.raises(DataError, match="original prepared data"):
    data.reproduce_eval_batches(train_arr, desc)


def test_measure_throughput_consumes_and_reports(train_arr):
  it = _iter(train_arr, n=20)
  tps = data.measure_throughput(it, 10)
  assert tps > 0 and it.get_state()["next_index"] == 11
