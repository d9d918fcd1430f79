"""Scanned layers and the named remat policy are execution choices: the same step (loss,
gradients, updated parameters), the same parameter tree (checkpoints restore across the
switch), a program whose size does not grow with depth, and less stored memory."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from configs import base, shakespeare_char
from gates import arch_match
from models.config import ModelConfig
from models.params import abstract_model, param_shapes
from models.transformer import SAVED_ACTIVATIONS
from train.state import step as step_lib


def _cfg(**over) -> ModelConfig:
  c = base.get_config()
  c.model.update(vocab_size=65, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64,
                 max_seq_len=32)
  return ModelConfig.from_dict({**c.model.to_dict(), **over})


def _batch(seed=0, b=8, t=32):
  toks = np.random.default_rng(seed).integers(0, 65, (b, t + 1))
  return {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
          "targets": jnp.asarray(toks[:, 1:], jnp.int32)}


def _sgd_step(cfg: ModelConfig, grad_accum: int, state: step_lib.TrainState | None = None):
  """One SGD(lr=1) step: the parameter update IS the gradient, so 'updated params equal'
  tests the gradients at 1e-6 without Adam's m/sqrt(v) amplifying float32 rounding."""
  tx = optax.sgd(1.0)
  graphdef, init = step_lib.init_fn(cfg, tx, 0)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, optax.constant_schedule(1.0),
                                          grad_accum=grad_accum))
  state = jax.jit(init)() if state is None else state
  new_state, metrics = step(state, _batch())
  grads = jax.tree.map(jnp.subtract, state.params, new_state.params)
  return float(metrics["loss"]), grads, new_state.params, state


def _close(a, b, tol=1e-6):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("remat, grad_accum", [
    ("none", 1), ("full", 1), ("minimal_with_context", 2), ("dots_saveable", 2)])
def test_scanned_equals_unrolled(remat, grad_accum):
  loss_u, grads_u, params_u, state = _sgd_step(_cfg(remat=remat), grad_accum)
  loss_s, grads_s, params_s, _ = _sgd_step(_cfg(remat=remat, scan_layers=True), grad_accum,
                                           state)
  np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
  _close(grads_s, grads_u)
  _close(params_s, params_u)
  moved = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_u))
  assert moved > 1e-3  # the update is not trivially zero


def test_parameter_tree_and_architecture_unchanged_by_execution_fields():
  """Scan, remat, attention backend and loss chunking change neither the stored tree nor an
  architecture field: a checkpoint of one restores under any other (arch_match passes)."""
  plain = _cfg()
  other = _cfg(scan_layers=True, remat="minimal_with_context", attention="xla", loss_chunk=8)
  assert param_shapes(abstract_model(other)) == param_shapes(abstract_model(plain))
  assert arch_match.config_differences(plain.to_dict(), other.to_dict()) == []
  assert not set(("scan_layers", "remat", "attention", "loss_chunk")) & set(
      arch_match.ARCH_FIELDS)


def _lowered_size(n_layers: int, scan: bool) -> int:
  """Characters of the lowered loss-gradient program (the model's forward and backward)."""
  graphdef, init = step_lib.init_fn(_cfg(n_layers=n_layers, scan_layers=scan), optax.sgd(1.0), 0)
  abstract = {k: jax.ShapeDtypeStruct((8, 32), jnp.int32) for k in ("inputs", "targets")}
  grad = jax.jit(jax.grad(step_lib.make_loss_fn(graphdef)))
  return len(grad.lower(jax.eval_shape(init).params, abstract).as_text())


def test_program_size_flat_in_depth_with_scan():
  """The forward and backward grow with depth when unrolled; scanned, only the per-layer
  parameter arguments and their stacking grow."""
  unrolled = _lowered_size(8, False) / _lowered_size(2, False)
  scanned = _lowered_size(8, True) / _lowered_size(2, True)
  assert unrolled > 2.5, unrolled
  assert scanned < 1.5, scanned


def _temp_bytes(remat: str) -> int:
  config = shakespeare_char.get_config()
  config.model.update(n_layers=2, remat=remat)
  cfg = ModelConfig.from_dict(config.model.to_dict())
  tx = step_lib.make_optimizer(config)
  graphdef, init = step_lib.init_fn(cfg, tx, 0)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, step_lib.lr_schedule(config)))
  abstract = {k: jax.ShapeDtypeStruct((8, 128), jnp.int32) for k in ("inputs", "targets")}
  return step.lower(jax.eval_shape(init), abstract).compile().memory_analysis(
  ).temp_size_in_bytes


def test_minimal_with_context_saves_the_named_activations(capsys):
  """The policy keeps exactly the tagged activations (and recomputes norms, RoPE, SiLU and
  the attention scores), so it stores less than no remat and no less than full remat."""
  cfg = _cfg(n_layers=1, remat="minimal_with_context")
  graphdef, init = step_lib.init_fn(cfg, optax.sgd(1.0), 0)
  jax.ad_checkpoint.print_saved_residuals(step_lib.make_loss_fn(graphdef),
                                          jax.eval_shape(init).params, _batch(b=2, t=16))
  names = set(re.findall(r" named '(\w+)'", capsys.readouterr().out))
  assert names == set(SAVED_ACTIVATIONS) - {"mlpwo"}  # the block output is saved as the sum
  temps = {p: _temp_bytes(p) for p in ("none", "minimal_with_context", "full")}
  assert temps["full"] <= temps["minimal_with_context"] < temps["none"], temps


@pytest.mark.slow
def test_checkpoint_restores_across_execution_switches(tmp_path, prepared_data):
  """Train unrolled; start a new run from that checkpoint with every execution field switched
  (scanned layers, named remat, dot_product_attention, chunked loss): the architecture check
  passes and the step-0 check re-evaluates the recorded val loss within float32 rounding."""
  over = {"model.n_layers": 2, "train_steps": 10, "checkpoint.save_every": 10}
  src = tmp_path / "unrolled"
  r = helpers.run_main(helpers.FORCE, *helpers.tiny_flags(prepared_data, over), workdir=src)
  assert r.rc == 0, r.stderr[-3000:]
  switched = {**over, "model.scan_layers": True, "model.remat": "minimal_with_context",
              "model.attention": "xla", "model.loss_chunk": 8}
  work = tmp_path / "scanned"
  r = helpers.run_main(helpers.FORCE, f"--init={src}:10",
                       *helpers.tiny_flags(prepared_data, switched), workdir=work)
  assert r.rc == 0, r.stderr[-3000:]
  check = helpers.events(helpers.read_jsonl(work / "metrics.jsonl"), "step0_check")
  assert len(check) == 1 and check[0]["abs_diff"] <= 1e-5 * check[0]["recorded"], check
