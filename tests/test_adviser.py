"""The compute-budget adviser: Chinchilla's split without a data limit, fewer parameters (never
more than the epoch limit) with one, a concrete shape counted as the gate counts it, and the
`pregate-plan --budget_flops` command whose overrides pass the gate as printed."""
import math

import pytest

from core import contracts
from gates import adviser, chinchilla, chinchilla_contract, effective, shapes
from models.config import ModelConfig
from models.params import count_params

GATE = chinchilla_contract.parse(contracts.load(chinchilla.CONTRACT))
CHINCHILLA_LAW = adviser.Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _count(shape: shapes.Shape) -> int:
  return count_params(ModelConfig(max_seq_len=128, **shape.model_fields())).total


@pytest.mark.parametrize("n", [400e6, 1e9, 10e9, 70e9], ids=["400M", "1B", "10B", "70B"])
def test_compute_optimal_n_and_shape_for_known_sizes(n):
  budget = 6 * n * 20 * n  # C = 6 N D at D = 20 N
  advice = adviser.advise(GATE, budget)
  assert advice.n_params == pytest.approx(n, rel=0.05)
  assert advice.tokens == pytest.approx(20 * n, rel=0.05) and advice.limited_by == "compute"
  shape = shapes.shape_for(advice.n_params, vocab_size=32_000)
  counted = _count(shape)  # exactly as the gate counts N
  assert counted == shape.n_params
  assert abs(counted / n - 1) < 0.05, (shape, counted)
  assert shape.d_model % shape.n_heads == 0 and shape.n_heads % shape.n_kv_heads == 0


@pytest.mark.parametrize("shape", [
    shapes.Shape(65, 96, 3, 4, 2, 256, True), shapes.Shape(100, 64, 2, 4, 1, 176, False),
    shapes.family(2048, 4, 32_000), shapes.family(640, 3, 50_257, tie_embeddings=False)])
def test_closed_form_count_matches_the_gate(shape):
  total, embedding = shape.counts()
  counts = count_params(ModelConfig(max_seq_len=64, **shape.model_fields()))
  assert (total, embedding) == (counts.total, counts.embedding)


@pytest.mark.parametrize("unique", [10**6, 10**8, 10**10])
@pytest.mark.parametrize("scale", [2.0, 10.0, 100.0, 10_000.0])
def test_data_limit_recommends_smaller_n_never_beyond_epoch_limit(unique, scale):
  # Budgets whose unconstrained plan needs `scale` x the unique data.
  budget = 6 * (scale * unique) ** 2 / 20
  free = adviser.advise(GATE, budget)
  limited = adviser.advise(GATE, budget, unique=unique)
  assert limited.n_params < free.n_params
  assert limited.tokens <= 4 * unique * (1 + 1e-12)  # never more than the epoch limit
  assert limited.epochs == pytest.approx(limited.tokens / unique)
  # What it recommends passes the gate on D' (to bisection precision).
  d_eff = effective.effective_tokens(limited.tokens, unique, GATE.r_star)
  assert d_eff >= 20 * limited.n_params * (1 - 1e-9)
  assert limited.flops_used <= budget * (1 + 1e-9)
  if limited.limited_by == "data: epoch limit":
    assert limited.tokens == 4 * unique and limited.flops_used < budget


def test_plentiful_data_changes_nothing():
  budget = 6 * 1e8 * 20e8
  assert adviser.advise(GATE, budget, unique=10**11).n_params == pytest.approx(1e8)


def test_fitted_law_gives_its_own_optimum():
  budget = 1e21
  advice = adviser.advise(GATE, budget, law=CHINCHILLA_LAW)
  assert advice.rule == "fitted law"
  assert advice.n_params == pytest.approx(CHINCHILLA_LAW.optimal_n(budget), rel=1e-3)
  # The closed form is the minimum of L(N, C/6N): nearby N do worse.
  def loss(n):
    return CHINCHILLA_LAW.loss(n, budget / (6 * n))

  assert loss(advice.n_params) < min(loss(advice.n_params * 0.9), loss(advice.n_params * 1.1))
  # A law that wants fewer than 20 tokens per parameter is capped by the gate.
  greedy = adviser.Law(E=1.0, A=1e6, B=10.0, alpha=0.3, beta=0.3)
  capped = adviser.advise(GATE, budget, law=greedy)
  assert capped.n_params == pytest.approx(math.sqrt(budget / 120), rel=1e-6)


def test_advised_plan_verdict_is_the_gates():
  unique = {"c": 1_003_854}
  advice = adviser.advise(GATE, 3e12, unique=unique["c"])
  shape = shapes.shape_for(advice.n_params, 65)
  total, embedding = shape.counts()
  v = chinchilla.evaluate(GATE, total, total - embedding, 4096, 4096, unique_tokens=unique)
  assert v.steps_needed is not None and v.steps_needed <= v.max_steps
