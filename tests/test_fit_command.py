"""pregate-fit as a user runs it: it reads finished runs, feeds the adviser, and refuses unfinished
runs in one line."""
import json
import pathlib
import subprocess

import pytest
from test_fit import TRUE, _fake_run, _grid

import helpers
from core import contracts
from gates import adviser, chinchilla_contract
from gates.adviser import Law

pytestmark = pytest.mark.e2e


REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fit_cli(*args: str) -> subprocess.CompletedProcess:
  return helpers.run_module("train.cli.fit", *args, timeout=600)


def test_fit_command_reads_runs_and_feeds_the_adviser(tmp_path):
  n, d, loss = _grid(TRUE)
  per_step = 1000
  unique = 10**13  # no repetition: D' = D, so the fit sees the grid's D exactly
  runs = []
  for i, (a, b, value) in enumerate(zip(n, d, loss)):
    runs.append(tmp_path / f"run{i}")
    _fake_run(runs[-1], int(a), int(b) // per_step, per_step, float(value), unique)
  out = tmp_path / "fit.json"
  r = _fit_cli(f"--out={out}", "--bootstrap=2", *map(str, runs))
  assert r.returncode == 0, r.stdout + r.stderr
  record = json.loads(out.read_text())
  for name, value in vars(TRUE).items():
    assert record["law"][name] == pytest.approx(value, rel=0.05), name
  assert len(record["runs"]) == 18 and "alpha" in r.stdout
  # The adviser takes the fitted law instead of the contract's 20 x.
  law = Law(**record["law"])
  gate = chinchilla_contract.parse(contracts.load(chinchilla_contract.CONTRACT))
  advice = adviser.advise(gate, 1e21, law=law)
  assert advice.n_params == pytest.approx(TRUE.optimal_n(1e21), rel=0.05)
  plan = helpers.run_module("train.cli.plan", "--config=configs/base.py", "--budget_flops=1e18",
                            f"--fit={out}", "--no_data_limit")
  assert plan.returncode == 0, plan.stdout + plan.stderr
  assert "advice (fitted law)" in plan.stdout


def test_fit_command_refuses_unfinished_runs_in_one_line(tmp_path):
  run = tmp_path / "run"
  _fake_run(run, 1000, 10, 10, 3.0, 100)
  lines = (run / "metrics.jsonl").read_text().splitlines()[:-1]  # no `end` event
  (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  r = _fit_cli(str(run))
  assert r.returncode == 2 and "Traceback" not in r.stderr
  [line] = r.stderr.strip().splitlines()
  assert line.startswith("ERROR: ConfigError:") and "final val_loss" in line
