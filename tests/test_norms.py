"""The step's param_norm and update_norm are the global L2 norms a NumPy computation gives on the
same states: of the parameters after the step, and of what the step changed."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from models.config import ModelConfig
from train.state import step as step_lib

pytestmark = pytest.mark.slow


VOCAB, SEQ, BATCH = 65, 16, 4


def _setup(grad_clip: float = 1.0):
  c = base.get_config()
  c.model.update(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64,
                 max_seq_len=SEQ)
  c.optimizer.update(lr=1e-2, weight_decay=0.1, grad_clip=grad_clip)
  c.schedule.update(warmup_steps=2)
  c.train_steps = 20
  tx = step_lib.make_optimizer(c)
  graphdef, init = step_lib.init_fn(ModelConfig.from_dict(c.model.to_dict()), tx, 0)
  return graphdef, tx, step_lib.lr_schedule(c), jax.jit(init)()


def _batch(seed: int):
  toks = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQ + 1))
  return {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
          "targets": jnp.asarray(toks[:, 1:], jnp.int32)}


def _norm64(tree) -> float:
  return float(np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2)
                           for x in jax.tree.leaves(tree))))


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_norms_equal_numpy_on_the_same_states(grad_clip):
  graphdef, tx, schedule, state = _setup(grad_clip)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, schedule))  # no donation: keep `old`
  for i in range(4):
    old = jax.device_get(state.params)
    state, metrics = step(state, _batch(i))
    new = jax.device_get(state.params)
    want_param = _norm64(new)
    want_update = _norm64(jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, new, old))
    assert (want_update > 0) == (i > 0)  # the schedule warms up from lr 0
    np.testing.assert_allclose(float(metrics["param_norm"]), want_param, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["update_norm"]), want_update, rtol=1e-5)


def test_skipped_step_reports_no_update():
  """With skip_nonfinite, a poisoned step leaves the params unchanged: update norm 0."""
  graphdef, tx, schedule, state = _setup()
  step = jax.jit(step_lib.make_train_step(graphdef, tx, schedule, skip_nonfinite=True))
  params = jax.tree.map(np.array, jax.device_get(state.params))
  params["blocks"][0]["attn_norm"]["scale"][0] = 1e30  # finite; overflows the scores
  state = state._replace(params=params)
  state, metrics = step(state, _batch(0))
  assert int(metrics["skipped"]) == 1
  assert float(metrics["update_norm"]) == 0.0


def test_norms_copy_no_parameters():
  """The donated step updates parameters in place: with the update norm computed from the
  updates, XLA:CPU used to copy every weight-decayed matrix per step (+7-11% step time).
  `in_place_after` ties the apply to the norm, so the compiled step copies no f32 array."""
  graphdef, tx, schedule, state = _setup()
  step = jax.jit(step_lib.make_train_step(graphdef, tx, schedule), donate_argnums=0)
  hlo = step.lower(state, _batch(0)).compile().as_text()
  entry = hlo.split("ENTRY", 1)[1]
  copies = [line.strip() for line in entry.splitlines() if " copy(" in line and "f32[" in line]
  assert not copies, copies[:5]


def test_norms_on_log_steps_only_keep_the_parameters_bitwise():
  """train.main runs the step with norms on log steps and the one without otherwise: any mix
  gives bitwise the parameters and optimizer state of either step alone, and the step without
  norms reports neither (the loop logs None, never a stale or made-up value)."""
  graphdef, tx, schedule, state0 = _setup()
  steps = {w: jax.jit(step_lib.make_train_step(graphdef, tx, schedule, weight_norms=w))
           for w in (False, True)}
  ends = []
  for pattern in ([False] * 6, [True] * 6, [False, False, True, False, True, True]):
    state = state0
    for i, w in enumerate(pattern):
      state, metrics = steps[w](state, _batch(i))
      assert ("update_norm" in metrics) == ("param_norm" in metrics) == w
    ends.append(jax.tree.leaves(jax.device_get((state.params, state.opt_state))))
  for other in ends[1:]:
    assert all(np.array_equal(a, b) for a, b in zip(ends[0], other))
