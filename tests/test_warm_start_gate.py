"""Gate contract v1.3: a warm start counts P, the tokens its initial weights already saw, toward
the floor (P + D' >= 20 N, exactly), while the epoch limit judges only the new run's data; the
P of a pregate checkpoint is its own recorded P plus the effective tokens it consumed."""
from fractions import Fraction

import pytest

from configs import shakespeare_char
from core import contracts
from core.errors import ConfigError
from gates import chinchilla, chinchilla_contract, effective
from gates.chinchilla import EFFECTIVE_FLOOR, EPOCH_LIMIT, OVER_REPEATED, Prior, evaluate, recheck
from train.run.preflight import preflight

GATE = chinchilla_contract.parse(contracts.load(chinchilla.CONTRACT))
N = 1_000


def _warm(tokens: int, prior: int, unique: int | None = None, per_step: int = 1):
  u = None if unique is None else {"corpus": unique}
  return evaluate(GATE, N, N, tokens, per_step, unique_tokens=u,
                  prior=Prior(prior, "test checkpoint") if prior else None)


def test_prior_counts_toward_the_floor_exactly():
  assert _warm(5_000, 15_000).passed  # P + D = 20 N exactly
  short = _warm(4_999, 15_000)
  assert not short.passed and short.failed_rules == (EFFECTIVE_FLOOR,)
  assert not _warm(4_999, 0).passed and not _warm(5_000, 0).passed  # fresh: D alone
  # The refusal gives the arithmetic: P, (P + D)/N and the steps the new data still needs.
  msg = short.message()
  for part in ("(P + D)/N = 19.99 < 20", "P = 15,000 tokens", "test checkpoint",
               "20*N = 20,000 - P = 5,000", "train_steps >= 5,000", "v1.3.0"):
    assert part in msg, (part, msg)
  assert short.steps_needed == 5_000
  d = short.to_dict()
  assert d["prior_tokens"] == 15_000 and d["prior_source"] == "test checkpoint"
  assert d["total_ratio_text"] == "19.99"


def test_prior_with_repeated_data_is_decided_on_p_plus_d_prime():
  # U = 2,000 unique tokens, D = 6,000 (3 epochs): D' < D, so P must make up the difference.
  d_eff = effective.total_interval(6_000, effective.sources({"corpus": 2_000}, None),
                                   GATE.r_star, 40)
  assert d_eff.hi < 6_000
  need = 20 * N - int(d_eff.lo)  # above the exact need: passes
  assert _warm(6_000, need + 1, unique=2_000).passed
  assert not _warm(6_000, 20 * N - 6_000, unique=2_000).passed  # P + D = 20 N, but P + D' < it


def test_epoch_limit_still_judges_the_new_data():
  # P alone clears the floor, yet 5 epochs of the new corpus break the epoch limit.
  v = _warm(10_000, 50_000, unique=2_000)
  assert v.zone == OVER_REPEATED and v.failed_rules == (EPOCH_LIMIT,)


def test_recheck_keeps_the_prior():
  first = _warm(5_000, 15_000)
  again = recheck(first, {"corpus": 10**9})
  assert again.prior_tokens == 15_000 and again.passed


def test_prior_from_a_record_is_its_own_prior_plus_effective_seen():
  record = {"prior_tokens": 700, "sources": [
      {"name": "corpus", "weight": "1", "unique_tokens": 2_000}]}
  prior = chinchilla.prior_from_record(GATE, record, 6_000, "ckpt")
  srcs = effective.sources({"corpus": 2_000}, None)
  d_eff = effective.total_interval(6_000, srcs, GATE.r_star, 60)
  assert prior.tokens == 700 + int(d_eff.lo) == 700 + effective.floor_of(
      lambda digits: effective.total_interval(6_000, srcs, GATE.r_star, digits))
  assert Fraction(prior.tokens - 700) <= d_eff.hi
  # A record without unique counts (U unknown to it) counts its consumed tokens as they are.
  assert chinchilla.prior_from_record(GATE, {}, 6_000, "ckpt").tokens == 6_000


def test_init_tokens_is_for_an_hf_directory_only(tmp_path):
  with pytest.raises(ConfigError, match="drop --init_tokens"):
    preflight(shakespeare_char.get_config(), str(tmp_path / "w"), False, init_tokens=5)


def test_hf_warm_start_without_init_tokens_names_the_flag(tmp_path):
  with pytest.raises(ConfigError, match="--init_tokens=T"):
    preflight(shakespeare_char.get_config(), str(tmp_path / "w"), False,
              init=f"hf:{tmp_path}/hf")
