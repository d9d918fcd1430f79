"""The in-step spike test (train/state/spikes.py): the statistics against a NumPy reference, and
the compiled step leaving parameters and optimizer moments bitwise unchanged on a spike,
without a host sync, while an ordinary step still applies."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from models.config import ModelConfig
from train.state import sharding, spikes
from train.state import step as step_lib
from train.state.setup import TrainSetup

W, SIGMA = 16, 6.0


def _reference(history: list[float], current: float) -> bool:
  """OLMo-core's rule: above mean + sigma * sample std of the finite history, once half full."""
  h = np.array([x for x in history if np.isfinite(x)], np.float64)
  if len(history) < W // 2 or len(h) < 2:
    return False
  current = current if np.isfinite(current) else np.inf
  return bool(current > h.mean() + SIGMA * h.std(ddof=1))


@pytest.mark.parametrize("seed", range(6))
def test_judge_matches_the_reference(seed):
  rng = np.random.default_rng(seed)
  hist = spikes.history(W).init(None)
  seen: list[float] = []
  for _ in range(3 * W):
    loss = float(rng.normal(3.0, 0.05)) if rng.random() > 0.1 else float(rng.normal(3.6, 0.1))
    if rng.random() < 0.03:
      loss = float("nan")
    spike = bool(spikes.judge(hist, jnp.float32(loss), jnp.float32(1.0), W, SIGMA))
    assert spike == _reference(seen[-W:], np.float32(loss)), (len(seen), loss)
    hist = spikes.push(hist, jnp.float32(loss), jnp.float32(1.0), W, jnp.asarray(spike))
    if not spike:
      seen.append(float(np.float32(loss)))


def test_a_spike_stays_out_of_the_history():
  hist = spikes.history(4).init(None)
  for x in (1.0, 1.1):
    hist = spikes.push(hist, jnp.float32(x), jnp.float32(1.0), 4, jnp.asarray(False))
  kept = spikes.push(hist, jnp.float32(9.0), jnp.float32(1.0), 4, jnp.asarray(True))
  assert int(kept.count) == 2 and np.array_equal(kept.losses, hist.losses)


def _setup():
  c = base.get_config()
  c.model.update(vocab_size=65, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                 max_seq_len=32)
  c.guard.spike_window = W
  c.schedule.warmup_steps = 0  # the first update moves the weights (a warmup's is lr 0)
  cfg = ModelConfig.from_dict(c.model.to_dict())
  tx = step_lib.make_optimizer(c)
  setup = TrainSetup.build(cfg, tx, 0, sharding.make_mesh((1, 1, 1)))
  step = jax.jit(step_lib.make_train_step(setup.graphdef, tx, step_lib.lr_schedule(c),
                                          spike_window=W, spike_sigma=SIGMA))
  toks = np.random.default_rng(0).integers(0, 65, (4, 33))
  batch = {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
           "targets": jnp.asarray(toks[:, 1:], jnp.int32)}
  return setup, step, batch


def _with_history(state, losses, grad_norms):
  """The state with a history of these losses and gradient norms."""
  hist = spikes.history(W).init(None)
  for x, g in zip(losses, grad_norms):
    hist = spikes.push(hist, jnp.float32(x), jnp.float32(g), W, jnp.asarray(False))
  return state._replace(opt_state=spikes.replace(state.opt_state, hist))


def test_the_step_skips_a_spike_bitwise_and_applies_an_ordinary_step():
  setup, step, batch = _setup()
  # An untrained model's loss is ln 65 = 4.17: a spike against a history around 1.0.
  wave = np.sin(np.arange(W))
  low = _with_history(setup.fresh_state(), 1.0 + 0.01 * wave, 1e-3 * (1 + 0.05 * wave))
  before = jax.tree.map(np.asarray, low)
  after, metrics = step(low, batch)
  assert int(metrics["spike"]) == 1 and float(metrics["loss"]) > 4.0
  got = jax.tree.map(np.asarray, after)
  for a, b in zip(jax.tree.leaves((got.params, got.opt_state)),
                  jax.tree.leaves((before.params, before.opt_state))):
    np.testing.assert_array_equal(a, b)
  assert int(got.step) == int(before.step) + 1

  loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
  usual = _with_history(setup.fresh_state(), loss + 0.05 * wave, grad_norm * (1 + 0.05 * wave))
  kept = jax.tree.map(np.asarray, usual.params)
  applied, metrics = step(usual, batch)
  assert int(metrics["spike"]) == 0
  moved = [not np.array_equal(a, b) for a, b in
           zip(jax.tree.leaves(jax.tree.map(np.asarray, applied.params)), jax.tree.leaves(kept))]
  assert all(moved)
  hist = spikes.find(applied.opt_state)
  assert int(hist.count) == W + 1


def test_the_step_has_no_host_callback():
  """Decided inside the program: the compiled step holds no host transfer for the guard."""
  setup, step, batch = _setup()
  text = step.lower(setup.fresh_state(), batch).as_text()
  assert "callback" not in text and "outfeed" not in text
