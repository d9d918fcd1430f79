"""The real train step learns, accumulates gradients exactly, decays only projection matrices,
follows the configured LR schedule, is deterministic, and initializes abstractly = concretely."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from models.config import ModelConfig
from train.state import step as step_lib

VOCAB, SEQ, BATCH = 65, 32, 8


def _config(lr=1e-2, warmup=10, decay_steps=0, min_lr_ratio=0.1, train_steps=1000):
  c = base.get_config()
  c.model.update(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                 d_ff=128, max_seq_len=SEQ)
  c.optimizer.update(lr=lr)
  c.schedule.update(warmup_steps=warmup, decay_steps=decay_steps, min_lr_ratio=min_lr_ratio)
  c.train_steps = train_steps
  return c


def _model_cfg(c, **over) -> ModelConfig:
  return ModelConfig.from_dict({**c.model.to_dict(), **over})


def _batch(seed=0, b=BATCH):
  toks = np.random.default_rng(seed).integers(0, VOCAB, (b, SEQ + 1))
  return {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
          "targets": jnp.asarray(toks[:, 1:], jnp.int32)}


class _Run:
  """One configured model + optimizer + jitted, donating train step (as the loop builds it)."""

  def __init__(self, c, grad_accum=1, seed=0, **model_over):
    self.tx = step_lib.make_optimizer(c)
    self.graphdef, self.init = step_lib.init_fn(_model_cfg(c, **model_over), self.tx, seed)
    self.step = jax.jit(step_lib.make_train_step(
        self.graphdef, self.tx, step_lib.lr_schedule(c), grad_accum=grad_accum),
        donate_argnums=0)

  def fresh(self):
    return jax.jit(self.init)()


@pytest.fixture(scope="module")
def run():
  return _Run(_config())


def test_overfits_one_batch(run):
  """A working step memorizes one fixed batch: loss falls > 90% from ~ln(vocab)."""
  state, batch = run.fresh(), _batch()
  losses = []
  for _ in range(40):
    state, metrics = run.step(state, batch)
    losses.append(float(metrics["loss"]))
  assert abs(losses[0] - math.log(VOCAB)) < 0.3, losses[0]
  assert losses[-1] < 0.1 * losses[0], losses[-10:]
  assert int(state.step) == 40
  assert all(np.isfinite(losses))


def _leaves_close(a, b, tol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol,
                               err_msg=jax.tree_util.keystr(path))


def test_grad_accum_equals_full_batch():
  """grad_accum=4 gives the full batch's loss, grad norm and updated params within 1e-6.

  SGD(lr=1) makes the param update the gradient itself; Adam's m/sqrt(v) would amplify fp32
  summation-order noise in near-zero gradients past 1e-6 without any bug.
  """
  c = _config()
  tx = optax.sgd(1.0)
  graphdef, init = step_lib.init_fn(_model_cfg(c), tx, 0)
  steps = {k: jax.jit(step_lib.make_train_step(graphdef, tx, optax.constant_schedule(1.0),
                                               grad_accum=k)) for k in (1, 4)}
  state = jax.jit(init)()
  batch = _batch(seed=5)
  (s1, m1), (s4, m4) = steps[1](state, batch), steps[4](state, batch)
  np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), rtol=1e-6)
  _leaves_close(s4.params, s1.params, 1e-6)
  # Sensitive: another batch moves the params by far more than the tolerance.
  s_other, _ = steps[1](state, _batch(seed=6))
  moved = np.abs(np.asarray(s_other.params["embed"]) - np.asarray(s1.params["embed"])).max()
  assert moved > 1e-4


def _flat(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("tied", [True, False])
def test_decay_mask(tied):
  """Decay every 2-D projection kernel; never norms or the token embedding."""
  c = _config()
  params = jax.eval_shape(step_lib.init_fn(_model_cfg(c, tie_embeddings=tied),
                                           step_lib.make_optimizer(c), 0)[1]).params
  mask = _flat(step_lib.decay_mask(params))
  shapes = _flat(params)
  kernels = [k for k in mask if k.endswith("['kernel']")]
  assert len(kernels) == 2 * 7 + (0 if tied else 1)
  for k in kernels:
    assert mask[k] is True and len(shapes[k].shape) == 2, k
  for k in mask:
    if "norm" in k:
      assert mask[k] is False, k
  assert mask["['embed']"] is False
  assert ("['lm_head']['kernel']" in mask) is not tied
  assert sum(mask.values()) == len(kernels)


def test_optimizer_applies_decay_mask():
  """With zero gradients only decayed leaves move: kernels shrink, norms/embedding stay put."""
  c = _config(lr=0.5, warmup=0)
  c.optimizer.weight_decay = 0.1
  tx = step_lib.make_optimizer(c)
  state = jax.jit(step_lib.init_fn(_model_cfg(c), tx, 0)[1])()

  @jax.jit
  def zero_grad_update(state):
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    updates, _ = tx.update(zeros, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates)

  new = _flat(zero_grad_update(state))
  old = _flat(state.params)
  for k, v in new.items():
    if k.endswith("['kernel']"):
      np.testing.assert_allclose(v, old[k] * (1 - 0.5 * 0.1), rtol=1e-5, err_msg=k)
    else:
      np.testing.assert_array_equal(v, old[k], err_msg=k)


def test_lr_schedule():
  """0 at step 0, peak at warmup end, lr * min_lr_ratio at decay end and after."""
  sched = step_lib.lr_schedule(_config(lr=3e-3, warmup=10, decay_steps=100, min_lr_ratio=0.1))
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(1.5e-3, rel=1e-5)
  assert float(sched(10)) == pytest.approx(3e-3, rel=1e-6)
  assert float(sched(55)) == pytest.approx(3e-4 + 0.5 * 2.7e-3, rel=1e-4)
  assert float(sched(100)) == pytest.approx(3e-4, rel=1e-5)
  assert float(sched(500)) == pytest.approx(3e-4, rel=1e-5)
  # decay_steps=0 means "decay over train_steps".
  sched = step_lib.lr_schedule(_config(lr=1e-3, warmup=5, decay_steps=0, min_lr_ratio=0.5,
                                       train_steps=40))
  assert float(sched(40)) == pytest.approx(5e-4, rel=1e-5)
  assert float(sched(20)) > 5e-4 * 1.01


def test_step_reports_scheduled_lr(run):
  """metrics['lr'] is the schedule at the step being taken (0 on the first step)."""
  state = run.fresh()
  lrs = []
  for _ in range(3):
    state, m = run.step(state, _batch())
    lrs.append(float(m["lr"]))
  assert lrs == pytest.approx([0.0, 1e-3, 2e-3], rel=1e-5)


def test_deterministic(run):
  """Two runs from the same init and data end bitwise identical after 5 steps."""
  finals = []
  for _ in range(2):
    state = run.fresh()
    for i in range(5):
      state, _ = run.step(state, _batch(seed=i))
    finals.append(jax.tree.map(np.asarray, (state.params, state.opt_state)))
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(finals[0][0]["embed"], np.asarray(run.fresh().params["embed"]))


def test_init_abstract_equals_concrete(run):
  """eval_shape(init) describes exactly what jit(init) builds (restore targets rely on it)."""
  abstract = jax.eval_shape(run.init)
  concrete = run.fresh()
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  for a, x in zip(jax.tree.leaves(abstract), jax.tree.leaves(concrete)):
    assert (a.shape, a.dtype) == (x.shape, x.dtype)
  assert int(concrete.step) == 0
  # The seed is honoured: same seed same params, another seed different params.
  np.testing.assert_array_equal(concrete.params["embed"], run.fresh().params["embed"])
  other = _Run(_config(), seed=1).fresh()
  assert not np.allclose(other.params["embed"], concrete.params["embed"])
