"""Remat is an execution choice: every policy gives the same step, with less stored memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shakespeare_char
from models.config import ModelConfig, ModelConfigError
from train.state import step as step_lib

pytestmark = pytest.mark.slow


def _step(remat: str):
  config = shakespeare_char.get_config()
  config.model.update(n_layers=2, remat=remat)
  cfg = ModelConfig.from_dict(config.model.to_dict())
  tx = step_lib.make_optimizer(config)
  graphdef, init = step_lib.init_fn(cfg, tx, 0)
  x = np.random.default_rng(0).integers(0, 65, (4, 33)).astype(np.int32)
  batch = {"inputs": jnp.asarray(x[:, :-1]), "targets": jnp.asarray(x[:, 1:])}
  fn = jax.jit(step_lib.make_train_step(graphdef, tx, step_lib.lr_schedule(config)))
  state = jax.jit(init)()
  compiled = fn.lower(state, batch).compile()
  for _ in range(3):
    state, metrics = compiled(state, batch)
  return state, metrics, compiled.memory_analysis().temp_size_in_bytes


def test_remat_policies_match_and_save_memory():
  """Every policy trains as no remat does and stores less; the named policy
  (minimal_with_context) stores no less than full remat (its saved names:
  tests/test_scan_layers.py)."""
  ref_state, ref_m, ref_temp = _step("none")
  temps = {}
  for policy in ("full", "dots_saveable", "minimal_with_context"):
    state, m, temps[policy] = _step(policy)
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert temps[policy] < ref_temp, (policy, temps[policy], ref_temp)
  assert temps["full"] <= temps["minimal_with_context"], temps


def test_unknown_remat_policy_refused():
  with pytest.raises(ModelConfigError, match="model.remat"):
    ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=8,
                max_seq_len=8, remat="sometimes")
