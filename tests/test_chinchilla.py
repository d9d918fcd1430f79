"""The Chinchilla gate's decision: exact zone boundaries, refusal, bypass, messages, contract."""
import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from core import contracts
from core.errors import ConfigError, ContractError, GateRefusal
from gates import chinchilla, chinchilla_contract
from gates.chinchilla import (
  COMPUTE_OPTIMAL,
  DEGENERATION,
  PLATEAU,
  ChinchillaGateError,
  enforce,
  evaluate,
  planned_tokens,
  warning_line,
)

N = st.integers(1, 10**12)
FLAG = "--force_under_provisioned"
GATE = chinchilla_contract.parse(contracts.load(chinchilla.CONTRACT))


def _verdict(n: int, d: int, tokens_per_step: int = 1, bypass: bool = False, contract=GATE):
  return evaluate(contract, n, n, d, tokens_per_step, bypass=bypass)


@settings(deadline=None)
@given(n=N, data=st.data(), bypass=st.booleans())
def test_refused_iff_below_twenty_n_without_bypass(n, data, bypass):
  d = data.draw(st.integers(0, 40 * n))
  v = evaluate(GATE, n, n // 2, d, 1, bypass=bypass)
  assert v.passed == (d >= 20 * n)
  assert v.bypassed == (bypass and d < 20 * n)
  assert v.proceeds == (d >= 20 * n or bypass)
  if d < 20 * n and not bypass:
    with pytest.raises(ChinchillaGateError):
      enforce(v)
  else:
    assert enforce(v) is v


@settings(deadline=None)
@given(n=N)
def test_zone_boundaries_are_exact(n):
  assert _verdict(n, 10 * n - 1).zone == DEGENERATION
  assert _verdict(n, 10 * n).zone == PLATEAU
  below = _verdict(n, 20 * n - 1)
  assert below.zone == PLATEAU and not below.passed
  at = _verdict(n, 20 * n)
  assert at.zone == COMPUTE_OPTIMAL and at.passed


@settings(deadline=None)
@given(n=N, data=st.data())
def test_degeneration_zone_refused(n, data):
  d = data.draw(st.integers(0, 10 * n - 1))
  v = _verdict(n, d)
  assert v.zone == DEGENERATION and not v.passed and not v.proceeds
  with pytest.raises(ChinchillaGateError) as info:
    enforce(v)
  assert isinstance(info.value, GateRefusal) and info.value.exit_code == 3
  assert "DEGENERATION" in str(info.value) and info.value.verdict is v


@settings(deadline=None)
@given(n=N)
def test_plateau_zone_refused(n):
  v = _verdict(n, 15 * n)
  assert v.zone == PLATEAU and not v.passed and not v.proceeds
  with pytest.raises(ChinchillaGateError, match="PLATEAU"):
    enforce(v)


@settings(deadline=None)
@given(n=N)
def test_boundary_exactly_twenty_passes(n):
  v = _verdict(n, 20 * n)
  assert v.passed and v.ratio == 20.0 and v.zone == COMPUTE_OPTIMAL
  assert enforce(v) is v
  assert not _verdict(n, 20 * n - 1).passed


@settings(deadline=None)
@given(n=N)
def test_twenty_five_passes(n):
  v = _verdict(n, 25 * n)
  assert v.passed and not v.bypassed and v.zone == COMPUTE_OPTIMAL
  assert enforce(v) is v


@settings(deadline=None)
@given(n=N, global_batch=st.integers(1, 4096), seq_len=st.integers(1, 8192))
def test_steps_needed_is_the_smallest_passing_step_count(n, global_batch, seq_len):
  per_step = global_batch * seq_len
  v = evaluate(GATE, n, n, planned_tokens(1, global_batch, seq_len), per_step)
  steps = v.steps_needed
  assert v.tokens_needed == 20 * n and v.tokens_per_step == per_step
  assert evaluate(GATE, n, n, planned_tokens(steps, global_batch, seq_len), per_step).passed
  if steps > 1:
    assert not evaluate(GATE, n, n, planned_tokens(steps - 1, global_batch, seq_len),
                        per_step).passed


@settings(deadline=None)
@given(n=N)
def test_refused_ratio_never_prints_as_twenty(n):
  text = chinchilla.ratio_text(20 * n - 1, n)
  assert float(text) < 20 and len(text.split(".")[1]) == 2
  assert f"D/N = {text} < 20" in _verdict(n, 20 * n - 1).message()


def test_refusal_message_names_zone_sizes_ratio_steps_and_flag():
  # The nanoGPT CPU config: N = 800,000 (791,680 non-embedding), 2,000 x 12 x 64 tokens.
  v = evaluate(GATE, 800_000, 791_680, planned_tokens(2000, 12, 64), 12 * 64)
  msg = v.message()
  assert "\n" not in msg
  for part in ("refused", "DEGENERATION", "800,000", "791,680", "1,536,000", "D/N = 1.92",
               "train_steps >= 20,834", "768 tokens/step", "16,000,000", FLAG, "v1.3.0"):
    assert part in msg, part
  with pytest.raises(ChinchillaGateError) as info:
    enforce(v)
  assert str(info.value) == msg


def test_plateau_message_has_two_decimals():
  msg = _verdict(1_000, 15_000).message()
  assert "PLATEAU" in msg and "D/N = 15.00 < 20" in msg and FLAG in msg


def test_pass_message():
  msg = evaluate(GATE, 311_040, 304_800, 8_192_000, 4096).message()
  assert msg.startswith("chinchilla gate passed: COMPUTE_OPTIMAL")
  assert "26.33" in msg and "311,040" in msg and "304,800" in msg and FLAG not in msg


@pytest.mark.parametrize("d, zone", [(5_000, DEGENERATION), (15_000, PLATEAU)])
def test_bypass_proceeds_and_is_recorded(d, zone):
  v = _verdict(1_000, d, bypass=True)
  assert not v.passed and v.bypassed and v.proceeds
  assert enforce(v) is v
  line = warning_line(v)
  assert "\n" not in line and line.startswith("WARNING")
  assert zone in line and chinchilla.ratio_text(d, 1_000) in line and FLAG in line
  assert v.message() == line
  record = json.loads(json.dumps(v.to_dict()))
  assert record["bypassed"] is True and record["passed"] is False and record["zone"] == zone


def test_bypass_on_a_passing_run_is_not_a_bypass():
  v = _verdict(1_000, 20_000, bypass=True)
  assert v.passed and not v.bypassed and v.proceeds
  with pytest.raises(ValueError):
    warning_line(v)


def test_to_dict_is_json_ready():
  v = evaluate(GATE, 800_000, 791_680, 1_536_000, 768)
  d = json.loads(json.dumps(v.to_dict()))
  assert d["n_params"] == 800_000 and d["n_non_embedding"] == 791_680
  assert d["tokens"] == 1_536_000 and d["zone"] == DEGENERATION and d["proceeds"] is False
  assert d["contract"] == "chinchilla-gate" and d["contract_version"] == "1.3.0"
  assert d["tokens_needed"] == 16_000_000 and d["steps_needed"] == 20_834
  assert d["tokens_per_step"] == 768 and d["floor_ratio"] == 20


def test_planned_tokens_is_the_whole_run():
  assert planned_tokens(2000, 32, 128) == 8_192_000
  for bad in [(0, 32, 128), (2000, -1, 128), (2000, 32, 1.5), (True, 32, 128)]:
    with pytest.raises(ConfigError):
      planned_tokens(*bad)


@pytest.mark.parametrize("args", [(0, 0, 1, 1), (10, 11, 1, 1), (10, 5, -1, 1), (10, 5, 1, 0),
                                  (10.0, 5, 1, 1)])
def test_evaluate_rejects_impossible_inputs(args):
  with pytest.raises(ValueError):
    evaluate(GATE, *args)


def test_contract_yaml_holds_the_v1_3_rule():
  c = contracts.load(chinchilla.CONTRACT)
  assert c["contract"] == "chinchilla-gate" and c["version"] == "1.3.0"
  assert c["thresholds"] == {"hard_floor_ratio": 20, "degeneration_below": 10, "max_epochs": 4}
  assert set(c["zones"]) == set(chinchilla.ZONES)
  assert set(c["rules"]) == set(chinchilla.RULES)
  assert c["effective_tokens"]["constants"] == {"R_star": "15.4"}
  assert c["bypass"]["flag"] == FLAG
  assert [i["id"] for i in c["invariants"]] == [f"INV-CHINCHILLA-00{i}" for i in (1, 2, 3)]
  assert [f["id"] for f in c["falsifiers"]] == [f"FALSIFY-CHINCHILLA-{i:03d}" for i in range(1, 16)]


def _edited_contract(tmp_path, **thresholds):
  """The shipped contract file with `thresholds` changed, written, read back and parsed."""
  path = contracts.CONTRACT_DIR / f"{chinchilla.CONTRACT}.yaml"
  data = yaml.safe_load(path.read_text())
  data["thresholds"].update(thresholds)
  data["version"] = "9.9.9"
  (tmp_path / path.name).write_text(yaml.safe_dump(data))
  return chinchilla_contract.parse(contracts.load_contract(tmp_path / path.name))


def test_thresholds_come_from_the_contract(tmp_path):
  assert _verdict(1_000, 25_000).passed
  edited = _edited_contract(tmp_path, hard_floor_ratio=30)
  v = _verdict(1_000, 25_000, contract=edited)
  assert not v.passed and v.zone == PLATEAU and v.contract_version == "9.9.9"
  assert v.tokens_needed == 30_000 and "< 30" in v.message()
  assert _verdict(1_000, 30_000, contract=edited).passed
  assert _verdict(1_000, 25_000).passed  # the shipped rule is untouched: nothing is cached
  rechecked = chinchilla.recheck(v, {"c": 10**9})  # judged again under the verdict's contract
  assert rechecked.contract == edited and not rechecked.passed and rechecked.tokens_needed == 30_000


def test_non_integer_threshold_is_refused(tmp_path):
  with pytest.raises(ContractError, match="hard_floor_ratio"):
    _edited_contract(tmp_path, hard_floor_ratio=20.5)
