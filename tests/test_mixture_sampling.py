"""Mixtures: sequences follow the weights (realized proportions within 1% over 10,000
sequences), statelessly (batch i is a function of (seed, i) alone), split over processes like a
single source, with exact per-source planned totals; sources share one tokenizer."""
import json

import numpy as np
import pytest

from core.errors import DataError
from train.data import datasets, mixture, pipeline, store

WEIGHTS = {"a": 0.5, "b": 0.3, "c": 0.2}
LETTERS = {"a": "abcde", "b": "fghij", "c": "klmno"}


def _docs(letters, n=300, seed=0):
  rng = np.random.default_rng(seed)
  return ["".join(rng.choice(list(letters), size=int(rng.integers(20, 200)))) for _ in range(n)]


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
  root = tmp_path_factory.mktemp("mix")
  for name, letters in LETTERS.items():
    path = root / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in _docs(letters)))
  data = {"tokenizer": "byte", "val_fraction": 0.1, "workers": 1, "mixture_block": 2048,
          "sources": {n: {"corpus": str(root / f"{n}.jsonl"), "weight": w}
                      for n, w in WEIGHTS.items()}}
  manifest = datasets.ensure(data, str(root / "data"))
  return root, data, manifest


def _source_of(rows):
  """Which source each window came from, by its letters (the end-of-text id 256 is shared)."""
  first = np.where(rows < 256, rows, 1000).min(axis=1)
  return np.searchsorted([ord("f"), ord("k")], first, side="right")


def test_realized_proportions_within_one_percent(mix):
  root, _, _ = mix
  train = pipeline.open_split(str(root / "data"), "train")
  assert isinstance(train, pipeline.MixtureTokens) and train.names == list(WEIGHTS)
  src = pipeline.BatchSource(train, global_batch=100, seq_len=16, seed=3, num_batches=100)
  counts = np.zeros(3)
  for i in range(100):
    counts += np.bincount(_source_of(src[i]["inputs"]), minlength=3)
  assert counts.sum() == 10_000
  np.testing.assert_allclose(counts / 10_000, list(WEIGHTS.values()), atol=0.01)


def test_batches_are_stateless_and_split_over_processes(mix):
  root, _, _ = mix
  train = pipeline.open_split(str(root / "data"), "train")
  kw = dict(global_batch=8, seq_len=16, seed=1, num_batches=50)
  whole = pipeline.BatchSource(train, **kw)
  it = pipeline.make_train_iter(train, **kw)
  from_iter = [next(it) for _ in range(50)]
  for i in (49, 0, 17):  # any order, fresh or not: the same batch
    np.testing.assert_array_equal(whole[i]["inputs"], from_iter[i]["inputs"])
  parts = [pipeline.BatchSource(train, process_index=p, process_count=2, **kw)[7]
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]),
                                whole[7]["inputs"])
  other_seed = pipeline.BatchSource(train, **{**kw, "seed": 2})
  assert not np.array_equal(other_seed[0]["inputs"], whole[0]["inputs"])
  assert it.get_state()["pipeline"]["mixture"]["weights"] == list(WEIGHTS.values())


def test_block_counts_and_exact_plan():
  counts = mixture.block_counts([0.5, 0.3, 0.2], 2048)
  assert counts.tolist() == [1024, 614, 410] and counts.sum() == 2048
  assert mixture.block_counts([1, 1, 1], 10).tolist() == [4, 3, 3]
  a = mixture.Assignment([0.5, 0.3, 0.2], 64, seed=5)
  drawn = a.sources(0, 1000)
  np.testing.assert_array_equal(np.bincount(drawn, minlength=3), a.totals(1000))
  for b in range(3):  # every whole block holds exactly the counts
    np.testing.assert_array_equal(np.bincount(drawn[b * 64:(b + 1) * 64], minlength=3),
                                  mixture.block_counts([0.5, 0.3, 0.2], 64))
  np.testing.assert_array_equal(a.sources(100, 50), drawn[100:150])
  plan = mixture.plan(["x", "y", "z"], [0.5, 0.3, 0.2], [1000, 2000, 4000], steps=25,
                      global_batch=40, seq_len=8, block=64, seed=5)
  assert [p["planned_tokens"] for p in plan.values()] == (a.totals(1000) * 8).tolist()
  assert plan["z"]["epochs"] == plan["z"]["planned_tokens"] / 4000


@pytest.mark.parametrize("weights,needle", [
    ([0.5, -0.1], "must be a number >= 0"), ([0.0, 0.0], "sum to 0"),
    ([float("nan"), 1.0], "must be a number >= 0")])
def test_bad_weights_are_one_line(mix, weights, needle):
  root, data, _ = mix
  sources = {n: {**data["sources"][n], "weight": w} for n, w in zip(["a", "b"], weights)}
  with pytest.raises(DataError, match=needle) as e:
    datasets.ensure({**data, "sources": sources}, str(root / "other"))
  assert "\n" not in str(e.value) and not (root / "other").exists()


def test_manifest_counts_per_source_and_reuse(mix):
  root, data, manifest = mix
  assert store.source_train_tokens(manifest) == {
      n: manifest["sources"][n]["train_tokens"] for n in WEIGHTS}
  from core.manifests import read_source_train_tokens
  assert read_source_train_tokens(str(root / "data")) == store.source_train_tokens(manifest)
  assert manifest["train_tokens"] == sum(e["train_tokens"] for e in manifest["sources"].values())
  before = (root / "data" / "manifest.json").stat().st_mtime_ns
  assert datasets.ensure(data, str(root / "data")) == manifest  # reused, nothing rewritten
  assert (root / "data" / "manifest.json").stat().st_mtime_ns == before
  plan = datasets.source_plan(manifest, steps=100, global_batch=20, seq_len=16, seed=0)
  assert sum(p["planned_tokens"] for p in plan.values()) == 100 * 20 * 16


def test_source_with_another_tokenizer_is_refused(mix, tmp_path):
  root, data, _ = mix
  from train.data import prepare
  prepare.prepare(str(root / "a.jsonl"), str(tmp_path / "char_a"), "char", 0.1)
  prepare.prepare(str(root / "b.jsonl"), str(tmp_path / "char_b"), "char", 0.1)
  bad = {"x": {"data_dir": str(tmp_path / "char_a"), "weight": 1.0},
         "y": {"data_dir": str(tmp_path / "char_b"), "weight": 1.0}}
  with pytest.raises(DataError, match="different tokenizer") as e:
    datasets.ensure({**data, "sources": bad}, str(tmp_path / "mixed"))
  assert "'y'" in str(e.value) and "\n" not in str(e.value)
