"""`pregate-plan` (python -m train.cli.plan) as a user runs it, and its helpers in-process."""
import dataclasses
import json

import pytest

from configs import base
from core import contracts
from core.errors import ConfigError
from gates import chinchilla_contract, effective, repetition
from train.cli import plan as plan_mod
from train.data import unique_tokens

GATE = chinchilla_contract.parse(contracts.load(chinchilla_contract.CONTRACT))

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
