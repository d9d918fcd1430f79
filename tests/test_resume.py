"""Stopping and re-running the same command is invisible in the result: a run interrupted at
step 15 and resumed ends with the same parameters, bit for bit, as one that never stopped.
Also: how each run ends (COMPLETED, PREEMPTED, EARLY_STOP) is recorded where tools look."""
import shutil

import numpy as np
import pytest

import helpers

pytestmark = pytest.mark.e2e


STEPS, STOP_AT = 40, 15


def _flags(data_dir, **overrides):
  return [*helpers.tiny_flags(data_dir, {"train_steps": STEPS, **overrides}), helpers.FORCE]


@pytest.fixture(scope="module")
def runs(prepared_data, tmp_path_factory):
  """One uninterrupted run, and one stopped after 15 steps then resumed by the same command."""
  root = tmp_path_factory.mktemp("resume")
  flags = _flags(prepared_data)
  whole = helpers.run_main(*flags, workdir=root / "whole")
  first = helpers.run_main(*flags, f"--stop_after_steps={STOP_AT}", workdir=root / "split")
  # Read now: the resumed run's retention (keep=2) deletes the step-15 save later.
  split_after_first = helpers.read_jsonl(root / "split" / "metrics.jsonl")
  steps_after_first = helpers.checkpoint_steps(root / "split")
  meta_after_first = helpers.checkpoint_meta(root / "split", steps_after_first[-1])
  second = helpers.run_main(*flags, workdir=root / "split")
  return dict(root=root, flags=flags, whole=whole, first=first, second=second,
              split_after_first=split_after_first, steps_after_first=steps_after_first,
              meta_after_first=meta_after_first)


def _end(workdir):
  ends = helpers.events(helpers.read_jsonl(workdir / "metrics.jsonl"), "end")
  assert ends, f"no 'end' record in {workdir}/metrics.jsonl"
  return ends[-1]


def test_uninterrupted_run_completes(runs):
  workdir = runs["root"] / "whole"
  assert runs["whole"].rc == 0, runs["whole"].stderr[-3000:]
  end = _end(workdir)
  assert (end["termination"], end["step"]) == ("COMPLETED", STEPS)
  assert helpers.checkpoint_steps(workdir)[-1] == STEPS
  meta = helpers.checkpoint_meta(workdir, STEPS)
  assert meta["termination"] == "COMPLETED" and meta["step"] == STEPS
  assert meta["val_loss"] == end["val_loss"]


def test_throughput_records_are_plausible(runs):
  """tokens/s excludes eval and save time; a window charged for time it did not contain used
  to report ~1e12 tokens/s (and MFU in the millions of percent)."""
  records = helpers.events(helpers.read_jsonl(runs["root"] / "whole" / "metrics.jsonl"), "train")
  assert [r["step"] for r in records] == list(range(10, STEPS + 1, 10))
  for r in records:
    assert 0 < r["tokens_per_s"] < 1e8, r
    assert 0 < r["mfu"] < 1, r


def test_preempted_run_exits_75_and_records_it(runs):
  first = runs["first"]
  assert first.rc == 75, first.stderr[-3000:]
  assert "Traceback" not in first.stderr
  ends = helpers.events(runs["split_after_first"], "end")
  assert len(ends) == 1
  assert (ends[0]["termination"], ends[0]["step"]) == ("PREEMPTED", STOP_AT)
  assert not [r for r in runs["split_after_first"] if r.get("step", 0) > STOP_AT]
  assert runs["steps_after_first"] == [10, STOP_AT]
  meta = runs["meta_after_first"]
  assert meta["termination"] == "PREEMPTED" and meta["step"] == STOP_AT


def test_resumed_run_is_bitwise_identical(runs):
  second, whole, split = runs["second"], runs["root"] / "whole", runs["root"] / "split"
  assert second.rc == 0, second.stderr[-3000:]
  end = _end(split)
  assert (end["termination"], end["step"]) == ("COMPLETED", STEPS)
  assert end["val_loss"] == _end(whole)["val_loss"]

  # The resumed process trained only steps 16..40.
  resumed = runs["split_after_first"]
  later = helpers.read_jsonl(split / "metrics.jsonl")[len(resumed):]
  assert later[0]["event"] == "gate"
  assert min(r["step"] for r in helpers.events(later, "train")) > STOP_AT

  evals = lambda recs: {r["step"]: r["val_loss"] for r in helpers.events(recs, "eval")}
  whole_evals = evals(helpers.read_jsonl(whole / "metrics.jsonl"))
  later_evals = evals(later)
  assert later_evals == {s: v for s, v in whole_evals.items() if s > STOP_AT}

  got, want = helpers.flat(helpers.load_params(split, STEPS)), \
      helpers.flat(helpers.load_params(whole, STEPS))
  assert got.keys() == want.keys() and want
  for path in want:
    assert got[path].dtype == want[path].dtype, path
    assert np.array_equal(got[path], want[path]), f"{path} differs after resume"


def test_rerunning_a_completed_run_trains_nothing(runs):
  workdir = runs["root"] / "again"
  shutil.copytree(runs["root"] / "whole", workdir)
  before = helpers.snapshot(workdir / "checkpoints")
  n_records = len(helpers.read_jsonl(workdir / "metrics.jsonl"))
  res = helpers.run_main(*runs["flags"], workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  assert helpers.snapshot(workdir / "checkpoints") == before  # no new or rewritten save
  new = helpers.read_jsonl(workdir / "metrics.jsonl")[n_records:]
  assert new[0]["event"] == "gate" and new[-1]["event"] == "end"
  assert not [r for r in new if r["event"] in ("train", "eval", "save")], new
  assert (new[-1]["termination"], new[-1]["step"]) == ("COMPLETED", STEPS)


def test_early_stop_is_recorded(prepared_data, tmp_path):
  """patience 1 with an impossible min_delta: the second evaluation cannot improve enough."""
  workdir = tmp_path / "run"
  res = helpers.run_main(*_flags(prepared_data, **{"eval.early_stop_patience": 1,
                                                    "eval.early_stop_min_delta": 100}),
                         workdir=workdir)
  assert res.rc == 0, res.stderr[-3000:]
  records = helpers.read_jsonl(workdir / "metrics.jsonl")
  assert [r["step"] for r in helpers.events(records, "eval")] == [10, 20]
  end = _end(workdir)
  assert (end["termination"], end["step"]) == ("EARLY_STOP", 20)
  assert helpers.checkpoint_steps(workdir)[-1] == 20
  meta = helpers.checkpoint_meta(workdir, 20)
  assert meta["termination"] == "EARLY_STOP" and meta["evals_without_improvement"] == 1
