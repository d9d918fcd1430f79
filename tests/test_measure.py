"""`pregate-plan --measure` (train.cli.plan) and the run's start-up forecast, end to end.

The forecast's event counts must be what the loop does: a real tiny run's metrics.jsonl is
the reference (an eval event per eval edge; a periodic save on a non-eval step evaluates too).
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from helpers import FORCE, run_main, run_module, tiny_flags

pytestmark = pytest.mark.e2e


FORECAST = re.compile(r"forecast: ([\d.]+) s = start-up ([\d.]+) \+ compile ([\d.]+) \+ "
                      r"([\d,]+) steps ([\d.]+) \+ (\d+) evals ([\d.]+) \+ (\d+) saves ([\d.]+)")
# save_every=15 with eval_every=10 over 30 steps: evals at 10, 20, 30 plus the one the save at
# step 15 needs; saves at 15 and the final one.
OVERRIDES = {"checkpoint.save_every": 15}


def _plan(*args: str, cache: Path) -> subprocess.CompletedProcess:
  return run_module("train.cli.plan", "--config=configs/shakespeare_char.py", *args, timeout=300,
                    env={"JAX_PLATFORMS": "cpu", "PREGATE_CACHE_DIR": str(cache)})


def _loop_counts(metrics: Path) -> tuple[int, int, int]:
  """(steps, evals, saves) the loop performed, read back from its metrics.jsonl."""
  recs = [json.loads(line) for line in metrics.read_text().splitlines()]
  eval_steps = {r["step"] for r in recs if r.get("event") == "eval"}
  saves = [r["step"] for r in recs if r.get("event") == "save"]
  end = next(r for r in recs if r.get("event") == "end")
  return end["step"], len(eval_steps) + sum(s not in eval_steps for s in saves), len(saves)


def test_measure_forecast_counts_match_a_real_run(prepared_data, tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  flags = tiny_flags(prepared_data, OVERRIDES)
  r = _plan(*flags, FORCE, "--measure", cache=cache)
  assert r.returncode == 0, r.stderr[-3000:]
  m = FORECAST.search(r.stdout)
  assert m, r.stdout
  total, startup, compile_s, *rest = (float(x.replace(",", "")) for x in m.groups())
  steps, train_s, evals, eval_s, saves, save_s = rest
  steps, evals, saves = int(steps), int(evals), int(saves)
  assert (steps, evals, saves) == (30, 4, 2)
  assert startup > 0 and compile_s > 0
  assert total == pytest.approx(startup + compile_s + train_s + eval_s + save_s, abs=0.5)
  step_ms = re.search(r"measured on this host: step ([\d.]+) ms", r.stdout)
  assert step_ms and float(step_ms[1]) > 0, r.stdout
  assert list((cache / "forecast").glob("*.json"))

  monkeypatch.setenv("PREGATE_CACHE_DIR", str(cache))
  run = run_main(*flags, FORCE, workdir=tmp_path / "run")
  assert run.rc == 0, run.stderr[-3000:]
  assert _loop_counts(tmp_path / "run" / "metrics.jsonl") == (steps, evals, saves)
  line = next(ln for ln in run.stderr.splitlines() if "forecast:" in ln)
  started = FORECAST.search(line)
  assert started and started.group(4, 6, 8) == m.group(4, 6, 8), line
  assert "from pregate-plan --measure at" in line
  # The measured unit costs are reused, not re-timed: the same per-event seconds.
  assert started.group(5, 7, 9) == m.group(5, 7, 9)


def test_start_line_without_a_measurement_prints_the_formula(prepared_data, tmp_path,
                                                              monkeypatch):
  monkeypatch.setenv("PREGATE_CACHE_DIR", str(tmp_path / "empty"))
  flags = tiny_flags(prepared_data, {"train_steps": 12, "checkpoint.save_every": 5})
  run = run_main(*flags, FORCE, workdir=tmp_path / "run")
  assert run.rc == 0, run.stderr[-3000:]
  line = next(ln for ln in run.stderr.splitlines() if "forecast:" in ln)
  # 12 steps: evals at 10, 12 and for the saves at 5; saves at 5, 10 and the final one.
  assert "12 x step_s + 3 x eval_s + 3 x save_s" in line
  assert "unmeasured: run pregate-plan --measure" in line
  assert _loop_counts(tmp_path / "run" / "metrics.jsonl") == (12, 3, 3)
  assert not os.path.exists(tmp_path / "empty")  # the run only reads the cache


def test_refused_plan_is_not_measured(tmp_path):
  # TINY without the bypass is under the floor: refused, and nothing is compiled or cached.
  r = _plan(*tiny_flags(None), "--measure", cache=tmp_path)
  assert r.returncode == 3, r.stderr[-3000:]
  assert "forecast: not measured, the gate refuses this run" in r.stdout
  assert not list(tmp_path.iterdir())


def test_measure_refuses_budget_flags(tmp_path):
  r = _plan("--measure", "--budget_flops=3e12", cache=tmp_path)
  assert r.returncode == 2
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and "drop the --budget_* flags" in lines[0]
