"""The end-of-run summary states what the records say, and only that."""
from __future__ import annotations

import statistics

import pytest

import helpers
from train.report import records as rec
from train.report import summary

pytestmark = pytest.mark.e2e


def test_summary_of_a_preempted_and_resumed_run(preempted):
  records = rec.load(str(preempted))
  text = summary.build(records, compile_s=2.0, eval_s=1.0, steps_s=6.0, wall_s=10.0,
                       workdir=str(preempted), checkpoint_dir=str(preempted / "checkpoints"),
                       tensorboard_dir=str(preempted / "tensorboard"))
  lines = text.splitlines()
  evals = helpers.events(records, "eval")
  best = min(evals, key=lambda r: r["val_loss"])
  train = helpers.events(records, "train")
  saves = [r["blocking_s"] for r in rec.segments(records)[-1] if r.get("event") == "save"]
  assert lines[0] == "run summary: COMPLETED at step 30 of 30 (resumed at step 10)"
  bpb = lambda r: f" ({r['val_bpb']:.4f} bpb)" if r.get("val_bpb") is not None else ""
  assert lines[1] == (f"val loss: final {evals[-1]['val_loss']:.4f}{bpb(evals[-1])} at step 30; "
                      f"best {best['val_loss']:.4f}{bpb(best)} at step {best['step']}")
  assert lines[2] == "tokens seen: 3.84k of 3.84k planned"  # 30 steps x 4 x 32
  tps = statistics.median(r["tokens_per_s"] for r in train)
  mfu = statistics.median(r["mfu"] for r in train)
  assert lines[3] == (f"throughput: median {tps:,.0f} tokens/s, median MFU {100 * mfu:.1f}% "
                      f"over 3 log windows")
  assert lines[4].startswith("wall time (this process): 10.0s = steps 6.0s (60%), compile "
                             "2.0s (20%), eval 1.0s (10%), checkpoint ")
  assert f"checkpoint {sum(saves):.1f}s" in lines[4]
  assert lines[5] == f"checkpoints: {preempted}/checkpoints"
  assert lines[6].startswith(f"tensorboard: {preempted}/tensorboard (`tensorboard --logdir ")
  assert lines[7] == f"plots: run `pregate-plot {preempted}` (writes {preempted}/plots)"


def test_summary_leaves_out_what_is_unknown():
  records = [
      {"event": "gate", "tokens_per_step": 100, "tokens": 10_000, "n_params": 50},
      {"event": "train", "step": 10, "train_steps": 100, "loss": 3.0, "tokens_per_s": 5.0},
      {"event": "eval", "step": 10, "val_loss": 2.9, "val_bpb": 1.25},
  ]
  text = summary.build(records, wall_s=90.0, compile_s=30.0)
  assert text.splitlines() == [
      "run summary: no end record (crashed or still running) at step 10 of 100",
      "val loss: final 2.9000 (1.2500 bpb) at step 10; best 2.9000 (1.2500 bpb) at step 10",
      "tokens seen: 1.00k of 10.00k planned",
      "throughput: median 5 tokens/s over 1 log windows",
      "wall time (this process): 1m30s = steps 1m00s (67%), compile 30.0s (33%)",
  ]


def test_explicit_termination_wins():
  records = [{"event": "gate"}, {"event": "eval", "step": 4, "val_loss": 1.0}]
  assert summary.build(records, termination="EARLY_STOP").splitlines()[0] == \
      "run summary: EARLY_STOP at step 4"
