"""Parallel tokenization: 1 and N worker processes write byte-identical arrays and manifests,
whatever the tokenizer; units come back in order (bounded in flight)."""
import json

import numpy as np
import pytest

import helpers
from train.data import prepare

DOCS = [f"{i}: " + " ".join(f"w{(i * j) % 97}x{j % 7}" for j in range(30 + i % 50))
        for i in range(1500)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("workers")
  path = root / "c.jsonl"
  path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
  return path


@pytest.mark.parametrize("kind,extra", [
    ("byte", {}), ("char", {"val_split": "tail"}), ("bpe", {"bpe_vocab_size": 400})])
def test_one_and_two_workers_write_identical_dirs(corpus, tmp_path, monkeypatch, kind, extra):
  monkeypatch.setattr(prepare, "UNIT_CHARS", 20_000)  # ~22 units: the pool really runs
  monkeypatch.setattr(prepare, "UNITS_PER_WORKER", 4)
  pools = []
  real = prepare.multiprocessing.get_context
  monkeypatch.setattr(prepare.multiprocessing, "get_context",
                      lambda method: pools.append(method) or real(method))
  made = {}
  for workers in (1, 2):
    out = tmp_path / f"w{workers}"
    made[workers] = prepare.prepare(str(corpus), str(out), kind, 0.1, workers=workers, **extra)
  assert pools == ["spawn"]  # 2 workers went through the process pool, 1 did not
  assert made[1] == made[2]
  one, two = helpers.snapshot(tmp_path / "w1"), helpers.snapshot(tmp_path / "w2")
  assert one == two  # every file, manifest included, byte for byte
  assert len(one) > 10 and made[1]["documents"] == len(DOCS)


def test_units_are_bounded_and_ordered(corpus, monkeypatch):
  monkeypatch.setattr(prepare, "UNIT_CHARS", 10_000)
  fp = prepare.Fingerprint.of(str(corpus), "auto")
  units = list(prepare._units(fp, prepare.DataSpec().read_options()))
  assert [d for _, docs, _ in units for d in docs] == DOCS
  assert all(chars < 10_000 + max(map(len, DOCS)) for _, _, chars in units)
  sizes = np.array([chars for _, _, chars in units])
  assert len(units) > 20 and sizes.sum() == sum(map(len, DOCS))
