"""pregate-plan as a user runs it: verdict lines, exit codes, bypass, overrides and the manifest's
unique-token count, through the real command."""
import json
import re
import subprocess

import pytest

import helpers

pytestmark = pytest.mark.e2e


NANOGPT = "--config=configs/nanogpt_shakespeare_char_cpu.py"
DEFAULT = "--config=configs/shakespeare_char.py"


def _run(*args: str) -> subprocess.CompletedProcess:
  return helpers.run_module("train.cli.plan", *args, timeout=300)


def _epochs(out: str) -> float:
  return float(re.search(r"= ([\d.]+) epochs", out)[1])


def test_default_config_passes():
  r = _run(DEFAULT)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "chinchilla gate passed: COMPUTE_OPTIMAL" in r.stdout.splitlines()[-1]
  assert "Traceback" not in r.stderr


def test_nanogpt_config_is_refused_as_degeneration():
  r = _run(NANOGPT)
  assert r.returncode == 3, r.stdout + r.stderr
  last = r.stdout.splitlines()[-1]
  assert last.startswith("chinchilla gate refused the run: DEGENERATION")
  # N = 800,000 is more than Tiny Shakespeare supports at any step count within 4 epochs.
  assert "--force_under_provisioned" in last and "train_steps <= 5,228" in last
  assert "shrink the model to N <= 186,999 parameters" in last
  assert "Traceback" not in r.stdout + r.stderr
  assert abs(_epochs(r.stdout) - 1.5) < 0.1
  assert "tokenizer 'char'" in r.stdout and "WARNING" not in r.stdout


def test_bypass_exits_zero_with_a_warning():
  r = _run(NANOGPT, "--force_under_provisioned")
  assert r.returncode == 0, r.stdout + r.stderr
  last = r.stdout.splitlines()[-1]
  assert last.startswith("WARNING: chinchilla gate bypassed") and "DEGENERATION" in last


def test_tokens_per_sec_adds_wall_times():
  """The time line exists only with --tokens_per_sec, and its figures are the arithmetic:
  700 x 4,096 tokens at 50,000 tokens/s = 57.3 s; the compute-optimal 779 steps = 1.1 min."""
  r = _run(DEFAULT, "--config.train_steps=700", "--tokens_per_sec=50000")
  assert r.returncode == 3
  time_lines = [line for line in r.stdout.splitlines() if line.startswith("time:")]
  assert time_lines == ["time: planned run 700 steps ~ 57.3 s; compute-optimal needs 779 steps "
                        "~ 1.1 min at 50,000 tokens/s"], r.stdout
  without = _run(DEFAULT, "--config.train_steps=700")
  assert not [line for line in without.stdout.splitlines() if line.startswith("time:")]


def test_config_override_can_make_the_run_pass():
  # More steps cannot (they would repeat the corpus past 4 epochs); a smaller model can.
  r = _run(NANOGPT, "--config.train_steps=100000")
  assert r.returncode == 3 and "OVER_REPEATED" in r.stdout.splitlines()[-1]
  r = _run(NANOGPT, "--config.model.d_model=64", "--config.model.n_layers=1",
           "--config.model.d_ff=128")
  assert r.returncode == 0, r.stdout + r.stderr


def test_manifest_gives_unique_tokens_and_warns_past_four_epochs(tmp_path):
  (tmp_path / "manifest.json").write_text(json.dumps({"train_tokens": 100_000}))
  r = _run(NANOGPT, f"--data_dir={tmp_path}", "--force_under_provisioned")
  assert r.returncode == 0, r.stdout + r.stderr
  assert "train_tokens from" in r.stdout and abs(_epochs(r.stdout) - 15.36) < 0.01
  assert "Muennighoff et al. 2023" in r.stdout
  last = r.stdout.splitlines()[-1]
  assert "rules bypassed: effective_floor, epoch_limit" in last and "15.36 epochs" in last


def test_bad_model_config_is_a_one_line_error():
  r = _run(NANOGPT, "--config.model.n_heads=3")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith(
      "ERROR: ModelConfigError: invalid model config")
  assert "Traceback" not in r.stderr
