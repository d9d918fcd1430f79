"""`pregate-plan` (python -m train.cli.plan) as a user runs it, and its helpers in-process."""
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from configs import base
from core import contracts
from core.errors import ConfigError
from gates import chinchilla_contract, effective, repetition
from train.cli import plan as plan_mod
from train.data import unique_tokens

GATE = chinchilla_contract.parse(contracts.load(chinchilla_contract.CONTRACT))

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NANOGPT = "--config=configs/nanogpt_shakespeare_char_cpu.py"
DEFAULT = "--config=configs/shakespeare_char.py"


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
  return subprocess.run([sys.executable, "-m", "train.cli.plan", *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


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
  r = _run(DEFAULT, "--config.train_steps=700", "--tokens_per_sec=50000")
  assert r.returncode == 3
  assert re.search(r"planned run 700 steps ~ [\d.]+ (s|min|h)", r.stdout), r.stdout
  assert re.search(r"compute-optimal needs [\d,]+ steps ~ [\d.,]+ (s|min|h).* at 50,000 tokens/s",
                   r.stdout), r.stdout
  assert "6*N*D" in r.stdout


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


@dataclasses.dataclass(frozen=True)
class _Counts:
  total: int
  non_embedding: int


def _config(tmp_path, text="hello world\n" * 100, tokenizer="char"):
  corpus = tmp_path / "corpus.txt"
  corpus.write_text(text, encoding="utf-8")
  c = base.get_config()
  c.train_steps, c.batch.global_batch, c.batch.seq_len = 10, 10, 10
  c.data.update(corpus=str(corpus), tokenizer=tokenizer, val_fraction=0.1)
  return c


def test_plan_lines_with_a_stand_in_count(tmp_path, monkeypatch):
  monkeypatch.setattr(plan_mod.params, "count_params", lambda cfg: _Counts(1_000, 900))
  lines, verdict = plan_mod.plan(_config(tmp_path, text="hello world\n" * 2_000),
                                 tokens_per_sec=100.0)
  text = "\n".join(lines)
  assert verdict.tokens == 1_000 and verdict.steps_needed == 200 and not verdict.proceeds
  assert "N = 1,000 trainable parameters (900 non-embedding, 100 embedding)" in text
  assert "C = 6*N*D = 6.000e+06 FLOPs" in text
  assert "planned run 10 steps ~ 10.0 s" in text
  assert "compute-optimal needs 200 steps ~ 3.3 min at 100 tokens/s" in text
  assert "U = 21,600 unique train tokens" in text
  assert lines[-1] == verdict.message()
  assert verdict.sources[0].unique_tokens == 21_600 and verdict.effective_tokens == 1_000


def test_plan_lines_when_the_data_cannot_reach_the_floor(tmp_path, monkeypatch):
  monkeypatch.setattr(plan_mod.params, "count_params", lambda cfg: _Counts(1_000, 900))
  lines, verdict = plan_mod.plan(_config(tmp_path), tokens_per_sec=100.0)  # U = 1,080
  assert verdict.steps_needed is None and verdict.n_params_max == 200
  assert "no compute-optimal plan within 4 epochs of the data: N <= 200" in "\n".join(lines)
  assert lines[-1] == verdict.message()


@pytest.mark.parametrize("tokenizer, expected, unit", [("char", 90, "characters"),
                                                       ("byte", 180, "utf-8 bytes")])
def test_corpus_estimate_counts_the_train_split(tmp_path, tokenizer, expected, unit):
  c = _config(tmp_path, text="é" * 100, tokenizer=tokenizer)
  unique, source = unique_tokens.unique_train_tokens(c.data)
  assert unique == {"corpus.txt": expected} and unit in source and tokenizer in source


def test_unreadable_manifest_skips_the_report(tmp_path):
  (tmp_path / "manifest.json").write_text("{not json")
  c = _config(tmp_path)
  unique, reason = unique_tokens.unique_train_tokens(c.data, data_dir=str(tmp_path))
  assert unique is None and "manifest.json" in reason


def test_tokens_per_sec_must_be_positive(tmp_path):
  with pytest.raises(ConfigError):
    plan_mod.plan(_config(tmp_path), tokens_per_sec=0.0)


@pytest.mark.parametrize("seconds, text", [(42, "42.0 s"), (750, "12.5 min"),
                                           (768_240, "213.4 h (8.9 d)"), (7200, "2.0 h")])
def test_human_duration(seconds, text):
  assert plan_mod.human_duration(seconds) == text


def test_repetition_without_repeats_is_worth_every_token():
  r = repetition.report(GATE, 900, 1_000, n_params=100)
  assert r.effective_tokens == 900 and r.effective_ratio == 9 and not r.warning
  assert r.epochs == 0.9


def test_repetition_follows_data_constrained_scaling():
  # 4 epochs = 3 repetitions: D' = U * (1 + 15.4 * (1 - exp(-3 / 15.4))) ~ 3.726 U.
  assert effective.effective_tokens(4_000, 1_000, GATE.r_star) == pytest.approx(3_725.88, abs=0.01)
  assert effective.effective_tokens(10**9, 1_000, GATE.r_star) <= 1_000 * (1 + GATE.r_star)
  at_four = repetition.report(GATE, 4_000, 1_000)
  assert not at_four.warning and not any("WARNING" in line for line in at_four.lines())
  past = repetition.report(GATE, 4_001, 1_000, n_params=10)
  assert past.warning and "Muennighoff et al. 2023" in past.lines()[-1]
  assert json.loads(json.dumps(past.to_dict()))["epochs"] == pytest.approx(4.001)
