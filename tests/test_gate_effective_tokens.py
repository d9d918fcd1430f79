"""Gate contract v1.2.0: decided on effective tokens D' (Muennighoff et al. 2023), exactly at the
boundary, per source for a mixture, with an epoch limit, bypassed rules recorded, and a recheck
once U is known; the default experiment passes on D' before anything is written."""
import decimal
import json
from fractions import Fraction

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import helpers
from configs import shakespeare_char
from core import contracts
from core.errors import ContractError
from gates import chinchilla, chinchilla_contract, effective
from gates.chinchilla import (
  COMPUTE_OPTIMAL,
  DEGENERATION,
  EFFECTIVE_FLOOR,
  EPOCH_LIMIT,
  OVER_REPEATED,
  PLATEAU,
  ChinchillaGateError,
  enforce,
  evaluate,
  recheck,
)
from train.data import prepare as prepare_data
from train.data import tokenizer as tokenizer_lib
from train.run.preflight import preflight

GATE = chinchilla_contract.parse(contracts.load(chinchilla.CONTRACT))


def _reference_d_eff(d: Fraction, u: int) -> decimal.Decimal:
  """D' at 100 digits, written out independently of gates.effective and the contract."""
  with decimal.localcontext() as ctx:
    ctx.prec = 100
    r = max(decimal.Decimal(d.numerator) / decimal.Decimal(d.denominator) / u - 1, 0)
    r_star = decimal.Decimal("15.4")
    return u + u * r_star * (1 - (-r / r_star).exp())


@settings(deadline=None, max_examples=15)
@given(u=st.integers(1_000, 10**9), per_step=st.integers(1, 4096), data=st.data())
def test_effective_boundary_exact_at_one_token_step(u, per_step, data):
  # N such that reaching D' >= 20 N needs repetition but fits within 4 epochs.
  n = data.draw(st.integers(u // 20 + 1, (37 * u) // 200))
  source = {"corpus": u}
  probe = evaluate(GATE, n, n, per_step, per_step, unique_tokens=source)
  steps = probe.steps_needed
  if steps is None:  # per_step too coarse to land inside the epoch limit for this N
    assert probe.n_params_max < n
    return
  at = evaluate(GATE, n, n, steps * per_step, per_step, unique_tokens=source)
  assert at.passed and at.zone == COMPUTE_OPTIMAL
  assert _reference_d_eff(Fraction(steps * per_step), u) >= 20 * n
  if steps > 1:
    below = evaluate(GATE, n, n, (steps - 1) * per_step, per_step, unique_tokens=source)
    assert not below.passed and below.failed_rules == (EFFECTIVE_FLOOR,)
    assert _reference_d_eff(Fraction((steps - 1) * per_step), u) < 20 * n
    # Judged on D alone (v1.1), the step below would pass whenever D >= 20 N.
    if (steps - 1) * per_step >= 20 * n:
      assert evaluate(GATE, n, n, (steps - 1) * per_step, per_step).passed


@settings(deadline=None)
@given(n=st.integers(1, 10**9))
def test_without_repetition_d_prime_is_d_and_exactly_twenty_passes(n):
  source = {"corpus": 40 * n}  # D <= U: no token repeats, D' = D exactly
  assert evaluate(GATE, n, n, 20 * n, 1, unique_tokens=source).passed
  v = evaluate(GATE, n, n, 20 * n - 1, 1, unique_tokens=source)
  assert not v.passed and v.zone == PLATEAU and v.effective_tokens == 20 * n - 1
  assert v.effective_ratio_text == chinchilla.ratio_text(20 * n - 1, n)


def test_mixture_epochs_and_effective_tokens_per_source():
  sources, weights = {"small": 1_000, "large": 100_000}, {"small": 1, "large": 1}
  v = evaluate(GATE, 100, 100, 8_000, 8, unique_tokens=sources, weights=weights)
  small, large = v.sources
  assert (small.name, small.tokens, small.epochs, small.over_limit) == ("small", 4000, 4.0, False)
  assert (large.tokens, large.epochs) == (4000, 0.04) and large.effective_tokens == 4000
  assert small.effective_tokens == pytest.approx(float(_reference_d_eff(Fraction(4000), 1000)))
  assert v.effective_tokens == pytest.approx(small.effective_tokens + 4000)
  # Pooled (U = 101,000 > D) nothing would repeat and D' would be 8,000: per source it is less.
  assert v.effective_tokens < 8_000 - 200
  assert v.passed and v.max_steps == 1000  # small: 4 * 1,000 / (1/2 * 8)
  over = evaluate(GATE, 100, 100, 8_008, 8, unique_tokens=sources, weights=weights)
  assert over.zone == OVER_REPEATED and over.failed_rules == (EPOCH_LIMIT,)
  assert [s.over_limit for s in over.sources] == [True, False]
  assert json.loads(json.dumps(over.to_dict()))["sources"][0]["epochs"] == pytest.approx(4.004)
  # Weights are exact fractions: 1/3 of 3,000 tokens is 1,000, exactly 4 epochs of U = 250.
  thirds = evaluate(GATE, 10, 10, 3_000, 3, unique_tokens={"a": 250, "b": 10**6},
                    weights={"a": "1", "b": "2"})
  assert thirds.sources[0].epochs == 4.0 and EPOCH_LIMIT not in thirds.failed_rules
  with pytest.raises(chinchilla.ConfigError, match="weight"):
    evaluate(GATE, 10, 10, 3_000, 3, unique_tokens={"a": 250, "b": 10}, weights=None)
  with pytest.raises(chinchilla.ConfigError, match="sum to > 0"):
    evaluate(GATE, 10, 10, 3_000, 3, unique_tokens={"a": 250}, weights={"a": 0})


def test_over_repeated_refused_with_zone_and_fix():
  # 5 epochs of U = 1,000: D/N = 50 and D'/N = 45 pass the floor, the epoch limit does not.
  v = evaluate(GATE, 100, 90, 5_000, 10, unique_tokens={"tiny.txt": 1_000})
  assert v.zone == OVER_REPEATED and v.failed_rules == (EPOCH_LIMIT,) and not v.proceeds
  assert v.effective_ratio > 20 and v.max_steps == 400 and v.steps_needed == 204
  with pytest.raises(ChinchillaGateError) as info:
    enforce(v)
  line = str(info.value)
  assert "\n" not in line and info.value.exit_code == 3
  for part in ("OVER_REPEATED", "epoch_limit", "tiny.txt 5.00 epochs over U = 1,000",
               "train_steps >= 204", "train_steps <= 400", "D'/N = 45.2", "(D/N = 50.00)",
               helpers.FORCE, "v1.3.0"):
    assert part in line, part
  # Too big for the data: no step count works, the fix is the N the data supports.
  big = evaluate(GATE, 300, 270, 5_000, 10, unique_tokens={"tiny.txt": 1_000})
  assert big.zone == OVER_REPEATED and set(big.failed_rules) == {EFFECTIVE_FLOOR, EPOCH_LIMIT}
  assert big.steps_needed is None and big.n_params_max == 186
  assert "shrink the model to N <= 186 parameters or add unique data" in big.message()
  assert evaluate(GATE, 186, 186, 4_000, 10, unique_tokens={"tiny.txt": 1_000}).passed
  assert not evaluate(GATE, 187, 187, 4_000, 10, unique_tokens={"tiny.txt": 1_000}).passed
  # Far below the floor the zone stays DEGENERATION, with the epoch limit still named.
  low = evaluate(GATE, 10_000, 10_000, 5_000, 10, unique_tokens={"tiny.txt": 1_000})
  assert low.zone == DEGENERATION and EPOCH_LIMIT in low.failed_rules


@pytest.mark.parametrize("tokens, rules", [(5_000, (EPOCH_LIMIT,)),
                                           (1_500, (EFFECTIVE_FLOOR,)),
                                           (50_000, (EFFECTIVE_FLOOR, EPOCH_LIMIT))])
def test_bypass_records_the_rules_it_bypassed(tokens, rules):
  n = 100 if tokens < 10_000 else 5_000
  v = evaluate(GATE, n, n, tokens, 10, bypass=True, unique_tokens={"tiny.txt": 1_000})
  assert v.bypassed and v.proceeds and v.bypassed_rules == rules and v.failed_rules == rules
  record = json.loads(json.dumps(v.to_dict()))
  assert record["bypassed_rules"] == list(rules) and record["bypass_requested"] is True
  line = chinchilla.warning_line(v)
  assert line.startswith("WARNING") and f"rules bypassed: {', '.join(rules)}" in line
  passing = evaluate(GATE, 100, 100, 3_000, 10, bypass=True, unique_tokens={"tiny.txt": 1_000})
  assert passing.passed and not passing.bypassed and passing.bypassed_rules == ()


def _edited(tmp_path, edit):
  """The shipped contract file with `edit` applied, written to a fresh directory, read back and
  parsed, as a caller would load it."""
  path = contracts.CONTRACT_DIR / f"{chinchilla.CONTRACT}.yaml"
  data = yaml.safe_load(path.read_text())
  edit(data)
  directory = tmp_path / edit.__name__
  directory.mkdir()
  (directory / path.name).write_text(yaml.safe_dump(data))
  return chinchilla_contract.parse(contracts.load_contract(directory / path.name))


def test_r_star_comes_from_the_contract(tmp_path):
  args = (311_040, 304_800, 6_553_600, 4096)
  source = {"tinyshakespeare.txt": 1_003_854}
  default = evaluate(GATE, *args, unique_tokens=source)
  assert default.effective_ratio_text == "18.21" and default.zone == OVER_REPEATED

  def slow_decay(data):
    data["effective_tokens"]["constants"]["R_star"] = "1e9"
    data["thresholds"]["max_epochs"] = 10

  v = evaluate(_edited(tmp_path, slow_decay), *args, unique_tokens=source)
  assert v.passed and v.effective_ratio_text == "21.06"  # R* -> infinity: D' -> D

  def fast_decay(data):
    data["effective_tokens"]["constants"]["R_star"] = "1e-9"
    data["thresholds"]["max_epochs"] = 10

  # R* -> 0: repeats are worthless, D' -> U
  v = evaluate(_edited(tmp_path, fast_decay), *args, unique_tokens=source)
  assert v.effective_tokens == pytest.approx(1_003_854) and v.zone == DEGENERATION

  def not_a_number(data):
    data["effective_tokens"]["constants"]["R_star"] = "fifteen"

  with pytest.raises(ContractError, match="R_star='fifteen' is not a positive number"):
    _edited(tmp_path, not_a_number)


def test_recheck_after_preparation_judges_effective_tokens():
  before = evaluate(GATE, 311_040, 304_800, 6_553_600, 4096)  # U unknown: judged on D
  assert before.passed and not before.unique_tokens_known and before.effective_tokens is None
  assert "judged after data preparation" in before.message()
  after = recheck(before, {"tinyshakespeare.txt": 1_003_854})
  assert not after.proceeds and after.zone == OVER_REPEATED and after.unique_tokens_known
  forced = recheck(evaluate(GATE, 311_040, 304_800, 6_553_600, 4096, bypass=True),
                   {"tinyshakespeare.txt": 1_003_854})
  assert forced.bypassed and forced.bypassed_rules == (EFFECTIVE_FLOOR, EPOCH_LIMIT)
  # A refusal on D is final: D' <= D, so knowing U can only lower the ratio.
  refused = evaluate(GATE, 311_040, 304_800, 20 * 311_040 - 1, 4096)
  assert not recheck(refused, {"c": 10**9}).passed


def test_default_config_passes_on_effective_tokens(tmp_path):
  workdir = tmp_path / "run"
  plan = preflight(shakespeare_char.get_config(), str(workdir), force=False)
  counts, verdict = plan.counts, plan.verdict
  assert not workdir.exists()
  # U as preparation will produce it: the train split of the char-tokenized corpus.
  text, _, _ = prepare_data.read_corpus(str(helpers.CORPUS))
  train, _ = prepare_data.split_tokens(tokenizer_lib.build_tokenizer("char", text).encode(text),
                                       0.1)
  [source] = verdict.sources
  assert source.name == "tinyshakespeare.txt" and source.unique_tokens == len(train)
  assert verdict.passed and not verdict.bypassed and verdict.zone == COMPUTE_OPTIMAL
  assert source.epochs <= 4 and verdict.effective_tokens >= 20 * counts.total
  assert verdict.effective_ratio_text == "21.65"


def test_ties_and_extreme_repetition_are_decided_promptly():
  # U (1 + R*) = 1,640 = 20 N exactly: D' only approaches it, so the floor is never reached.
  for tokens in (10**5, 10**9, 10**12):  # 10^3 .. 10^10 epochs
    v = evaluate(GATE, 82, 82, tokens, 10, unique_tokens={"a": 100})
    assert v.failed_rules == (EFFECTIVE_FLOOR, EPOCH_LIMIT) and v.zone == OVER_REPEATED
    assert v.effective_ratio_text == "19.99"  # truncated: D'/N < 20, however close


def test_decide_is_exact_for_points_and_refines_intervals():
  one_third = effective.Interval.point(Fraction(1, 3))
  assert effective.decide(lambda digits: one_third, Fraction(1, 3))
  assert not effective.decide(lambda digits: one_third, Fraction(1, 3) + Fraction(1, 10**30))
  def e(digits):
    return effective.exp_interval(Fraction(1), digits)

  # e = 2.71828182845904523536028747135266249775724709369995...
  assert effective.decide(e, Fraction("2.718281828459045235360287471352662497757247093699"))
  assert not effective.decide(e, Fraction("2.718281828459045235360287471352662497757247093700"))
  assert effective.exp_interval(Fraction(0), 40) == effective.Interval.point(1)
  # No repetition is exact: D' = D, a point.
  assert effective.source_interval(Fraction(7, 2), 4, GATE.r_star, 40) == effective.Interval.point(
      Fraction(7, 2))
