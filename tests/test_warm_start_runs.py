"""Continued pretraining through the real command (contract v1.3): a warm start from a run that
met the floor, with a short new budget, passes on P + D' and records both parts everywhere the
verdict is; a warm start still short of 20 N is refused before anything runs, with the
arithmetic; a resume counts the prior once."""
import json
from pathlib import Path

import pytest

import helpers
import shared_runs
from train.ckpt import metadata
from train.hf import model_card

pytestmark = pytest.mark.e2e

# The tiny model (N = 11,392) at 32 x 128 = 4,096 tokens/step: 56 steps reach 20 N, so a
# 60-step run passes the gate on its own and its checkpoint carries P >= 20 N.
WIDE = {"batch.global_batch": 32, "batch.seq_len": 128, "train_steps": 60,
        "checkpoint.save_every": 30, "eval.eval_every": 30, "logging.log_every": 30}
WARM = {**WIDE, "train_steps": 6, "checkpoint.save_every": 3, "eval.eval_every": 3,
        "logging.log_every": 3, "schedule.warmup_steps": 2}


def _base(prepared_data: str, out: Path) -> None:
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, WIDE), workdir=out)
  assert res.rc == 0, res.stderr[-3000:]


def _warm(prepared_data: str, base: Path, out: Path) -> None:
  """A 6-step warm start, preempted at step 3 and resumed by the same command."""
  args = (*helpers.tiny_flags(prepared_data, WARM), f"--init={base}")
  first = helpers.run_main(*args, "--stop_after_steps=3", workdir=out / "run")
  assert first.rc == 75, first.stderr[-3000:]
  (out / "gate_first.json").write_text((out / "run" / "gate.json").read_text())
  second = helpers.run_main(*args, workdir=out / "run")
  assert second.rc == 0, second.stderr[-3000:]
  (out / "stderr.txt").write_text(first.stderr + second.stderr)


@pytest.fixture(scope="module")
def runs(prepared_data, shared_root):
  base = shared_runs.once(shared_root, "wide_60", lambda w: _base(prepared_data, w))
  warm = shared_runs.once(shared_root, "warm_from_wide",
                          lambda w: _warm(prepared_data, base, w))
  return base, warm


def test_warm_start_passes_and_records_both_parts(runs):
  base, warm = runs
  gate = json.loads((warm / "run" / "gate.json").read_text())
  assert gate["passed"] and not gate["bypassed"], gate
  # P: the base run's 60 x 4,096 consumed tokens at their effective worth (0.25 epochs: D' = D).
  assert gate["prior_tokens"] == 245_760 and "60" in gate["prior_source"]
  assert gate["tokens"] == 6 * 4_096 and gate["prior_tokens"] + gate["tokens"] >= 20 * 11_392
  assert gate["total_ratio_text"] == "23.73"
  records = helpers.read_jsonl(warm / "run" / "metrics.jsonl")
  gates = [r for r in records if r.get("event") == "gate"]
  assert gates and all(g["prior_tokens"] == 245_760 for g in gates)
  for step in helpers.checkpoint_steps(warm / "run"):
    assert helpers.checkpoint_meta(warm / "run", step)["gate"]["prior_tokens"] == 245_760
  meta = metadata.parse(helpers.checkpoint_meta(warm / "run", 6))
  card = model_card._verdict(meta.gate)
  assert "(P + D')/N = 23.73" in card and "P = 245,760 tokens" in card, card
  assert "D'/N = 2.15 of this run" in card, card


def test_resume_counts_the_prior_once(runs):
  _, warm = runs
  first = json.loads((warm / "gate_first.json").read_text())
  again = json.loads((warm / "run" / "gate.json").read_text())
  assert first["prior_tokens"] == again["prior_tokens"] == 245_760
  assert again["tokens"] == first["tokens"]  # the whole run's plan, still once


def test_warm_start_still_short_is_refused_with_arithmetic(trained_tiny, prepared_data, tmp_path):
  # The 20-step tiny run (bypassed) saw 2,560 tokens; 30 more steps leave P + D far below 20 N.
  workdir = tmp_path / "w"
  res = helpers.run_main(*helpers.tiny_flags(prepared_data), f"--init={trained_tiny}",
                         workdir=workdir)
  line = helpers.assert_one_line_error(
      res, "chinchilla gate refused", "(P + D')/N = 0.56 < 20", "P = 2,560 tokens",
      "20*N = 227,840 - P = 225,280", "v1.3.0", rc=3)
  assert "DEGENERATION zone ((P + D')/N < 10" in line and not workdir.exists()


def test_hf_warm_start_needs_init_tokens(tmp_path):
  res = helpers.run_main(f"--init=hf:{tmp_path}/no-such-dir", workdir=tmp_path / "w")
  helpers.assert_one_line_error(res, "--init_tokens=T", "does not record the tokens")
  assert res.rc == 2 and not (tmp_path / "w").exists()
