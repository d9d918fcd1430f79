"""pregate-plan's budget adviser as a user runs it: the printed overrides pass the gate, and a
budget in hours uses the measured throughput."""
import subprocess

import pytest

import helpers

pytestmark = pytest.mark.e2e


def _plan(*args: str) -> subprocess.CompletedProcess:
  return helpers.run_module("train.cli.plan", *args, timeout=300)


def test_budget_command_prints_overrides_that_pass_the_gate():
  r = _plan("--config=configs/shakespeare_char.py", "--budget_flops=1e15")
  assert r.returncode == 0, r.stdout + r.stderr
  out = r.stdout
  assert "limited by data: epoch limit" in out and "add unique data" in out
  [overrides] = [line for line in out.splitlines() if line.startswith("overrides: ")]
  flags = overrides.split()[1:]
  assert any(f.startswith("--config.model.d_model=") for f in flags)
  assert any(f.startswith("--config.train_steps=") for f in flags)
  assert out.splitlines()[-1].startswith("chinchilla gate passed: COMPUTE_OPTIMAL")
  # Pasted into the plain dry run, the overrides pass as printed, within the epoch limit.
  again = _plan("--config=configs/shakespeare_char.py", *flags)
  assert again.returncode == 0, again.stdout + again.stderr
  assert again.stdout.splitlines()[-1] == out.splitlines()[-1]


def test_budget_hours_uses_the_measured_throughput():
  r = _plan("--config=configs/shakespeare_char.py", "--budget_hours=0.01",
            "--tokens_per_sec=20000", "--no_data_limit")
  assert r.returncode == 0, r.stdout + r.stderr
  n_config = 152_064
  assert f"= {6 * n_config * 20_000 * 36:.3e} FLOPs" in r.stdout
  bad = _plan("--config=configs/shakespeare_char.py", "--budget_hours=1")
  assert bad.returncode == 2 and "--tokens_per_sec" in bad.stderr
  assert "Traceback" not in bad.stderr
