"""Scanned layers and the named remat policy are execution choices: the same step (loss,
gradients, updated parameters), the same parameter tree (checkpoints restore across the
switch), a program whose size does not grow with depth, and less stored memory."""
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
from configs import base
from gates import arch_match
from models.config import ModelConfig
from models.params import abstract_model, param_shapes
from models.transformer import SAVED_ACTIVATIONS
from train.ckpt.restore import load_for_eval
from train.state import sharding
from train.state import step as step_lib
from train.state.setup import TrainSetup

pytestmark = pytest.mark.e2e


def _cfg(**over) -> ModelConfig:
  c = base.get_config()
  c.model.update(vocab_size=65, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                 max_seq_len=32)
  return ModelConfig.from_dict({**c.model.to_dict(), **over})


def _batch(seed=0, b=8, t=32):
  toks = np.random.default_rng(seed).integers(0, 65, (b, t + 1))
  return {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
          "targets": jnp.asarray(toks[:, 1:], jnp.int32)}


def _setup_and_step(cfg: ModelConfig, tx, schedule, grad_accum: int = 1):
  """The configured layout on one device and its jitted train step (donating, as the loop's)."""
  setup = TrainSetup.build(cfg, tx, 0, sharding.make_mesh((1, 1, 1)))
  return setup, setup.jit_step(step_lib.make_train_step(setup.graphdef, tx, schedule,
                                                        grad_accum=grad_accum))


def _sgd_step(cfg: ModelConfig, grad_accum: int, state: step_lib.TrainState | None = None):
  """One SGD(lr=1) step: the parameter update IS the gradient, so 'updated params equal'
  tests the gradients at 1e-6 without Adam's m/sqrt(v) amplifying float32 rounding. A given
  `state` is in the stored layout and enters the training layout (stacked when scanned);
  the results come back in the stored layout."""
  tx = optax.sgd(1.0)
  setup, step = _setup_and_step(cfg, tx, optax.constant_schedule(1.0), grad_accum)
  start = setup.fresh_state() if state is None else setup.to_train(state)
  stored = jax.tree.map(jnp.copy, setup.to_stored(start))  # the step donates `start`
  new_state, metrics = step(start, _batch())
  new_params = setup.to_stored(new_state.params)
  grads = jax.tree.map(jnp.subtract, stored.params, new_params)
  return float(metrics["loss"]), grads, new_params, stored


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


def _adamw_steps(cfg: ModelConfig, n: int, state: step_lib.TrainState | None = None):
  """n steps of the shipped optimizer (clipping, AdamW with decay on kernels only) from a
  stored-layout state; -> (losses, final state in the stored layout, initial stored state)."""
  config = base.get_config()
  config.optimizer.update(lr=3e-2, weight_decay=0.5, grad_clip=0.05)
  config.schedule.update(warmup_steps=1)
  tx = step_lib.make_optimizer(config)
  setup, step = _setup_and_step(cfg, tx, step_lib.lr_schedule(config))
  train = setup.fresh_state() if state is None else setup.to_train(state)
  start = jax.tree.map(jnp.copy, setup.to_stored(train))
  losses = []
  for i in range(n):
    train, metrics = step(train, _batch(seed=i))
    losses.append(float(metrics["loss"]))
  return losses, setup.to_stored(train), start


def test_stacked_training_state_equals_per_layer_under_adamw():
  """Scanned layers keep the block parameters and Adam moments stacked [L, ...] through the
  whole step (clipping, decay mask by name, moments); after 4 steps the state converted back
  to the stored layout equals the per-layer run's, and the initial states are identical."""
  losses_u, end_u, start_u = _adamw_steps(_cfg(), 4)
  losses_s, end_s, start_s = _adamw_steps(_cfg(scan_layers=True), 4)
  _close(start_s, start_u, tol=0)
  np.testing.assert_allclose(losses_s, losses_u, rtol=1e-6)
  _close(end_s, end_u, tol=2e-6)
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(end_u.params), jax.tree.leaves(start_u.params)))
  assert moved > 1e-2, moved


def test_stacked_layout_round_trips_exactly():
  """stored -> training -> stored is the identity, bit for bit, for a whole TrainState and for
  params alone; the training layout holds one [L, ...] leaf per block parameter."""
  cfg = _cfg(n_layers=4, scan_layers=True)
  tx = step_lib.make_optimizer(base.get_config())
  setup = TrainSetup.build(cfg, tx, 3, sharding.make_mesh((1, 1, 1)))
  train = setup.fresh_state()
  assert train.params["blocks"]["attn"]["wq"]["kernel"].shape == (4, 32, 32)
  assert train.params["blocks"]["mlp_norm"]["scale"].shape == (4, 32)
  stored = setup.to_stored(train)
  assert sorted(stored.params["blocks"]) == [0, 1, 2, 3]
  assert jax.tree.structure(stored) == jax.tree.structure(setup.stored_abstract)
  _close(setup.to_train(stored), train, tol=0)
  _close(setup.to_train(stored.params), train.params, tol=0)
  np.testing.assert_array_equal(stored.params["blocks"][2]["attn"]["wo"]["kernel"],
                                train.params["blocks"]["attn"]["wo"]["kernel"][2])


def _step_fusions(n_layers: int, scan: bool) -> int:
  """Fusions in the compiled full train step (AdamW, clipping, donation): what grows with
  depth when the program does."""
  config = base.get_config()
  tx = step_lib.make_optimizer(config)
  setup, step = _setup_and_step(_cfg(n_layers=n_layers, scan_layers=scan), tx,
                                step_lib.lr_schedule(config))
  batch = {k: jax.ShapeDtypeStruct((8, 32), jnp.int32) for k in ("inputs", "targets")}
  text = step.lower(setup.abstract_state(), batch).compile().as_text()
  return text.split("ENTRY", 1)[1].count(" fusion(")


def test_compiled_train_step_flat_in_depth_with_scan():
  """The whole compiled step (not only the model: the optimizer, clipping, the norms) holds
  about the same kernels at 2 and 6 layers when scanned (measured 130 vs 132: XLA splits a
  few fusions differently as the stacked buffers grow); unrolled they grow with depth (375 vs
  1,047). Compile seconds: scripts/ab_scan_layers.py (docs/benchmarks.md)."""
  shallow, deep = _step_fusions(2, True), _step_fusions(6, True)
  assert deep <= 1.1 * shallow, (shallow, deep)
  assert _step_fusions(6, False) > 2.5 * _step_fusions(2, False)


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


def test_minimal_with_context_saves_the_named_activations(capsys):
  """The policy keeps exactly the tagged activations (and recomputes norms, RoPE, SiLU and
  the attention scores); what it stores against the other policies: tests/test_remat.py."""
  cfg = _cfg(n_layers=1, remat="minimal_with_context")
  graphdef, init = step_lib.init_fn(cfg, optax.sgd(1.0), 0)
  jax.ad_checkpoint.print_saved_residuals(step_lib.make_loss_fn(graphdef),
                                          jax.eval_shape(init).params, _batch(b=2, t=16))
  names = set(re.findall(r" named '(\w+)'", capsys.readouterr().out))
  assert names == set(SAVED_ACTIVATIONS) - {"mlpwo"}  # the block output is saved as the sum


SWITCHED = {"model.scan_layers": True, "model.remat": "minimal_with_context",
            "model.attention": "xla", "model.loss_chunk": 8}
PLAIN = {"model.scan_layers": False, "model.remat": "none", "model.attention": "auto",
         "model.loss_chunk": 0}


def _two_layers(**over) -> dict:
  return {"model.n_layers": 2, "train_steps": 20, "checkpoint.save_every": 10, **over}


@pytest.fixture(scope="module")
def scanned(prepared_data, tmp_path_factory):
  """A 2-layer run with every execution field switched on (scanned layers, named remat,
  dot_product_attention, chunked loss), saved at steps 10 and 20."""
  work = tmp_path_factory.mktemp("scanned") / "run"
  r = helpers.run_main(helpers.FORCE, *helpers.tiny_flags(prepared_data,
                                                          _two_layers(**SWITCHED)), workdir=work)
  assert r.rc == 0, r.stderr[-3000:]
  return work


def test_checkpoint_restores_across_execution_switches(scanned, tmp_path, prepared_data):
  """The scanned run trained on stacked layers and saved the per-layer layout: it loads for
  evaluation as its metadata says; a new run warm-started from it with every execution field
  switched off passes the architecture check and the step-0 check within float32 rounding; and
  that run resumes with every switch turned back on."""
  restored = load_for_eval(str(scanned))
  assert param_shapes(restored.model) == param_shapes(abstract_model(
      ModelConfig.from_dict(dict(restored.meta.model))))
  work = tmp_path / "unrolled"
  r = helpers.run_main(helpers.FORCE, f"--init={scanned}:10", *helpers.tiny_flags(
      prepared_data, _two_layers(**PLAIN, train_steps=10)), workdir=work)
  assert r.rc == 0, r.stderr[-3000:]
  check = helpers.events(helpers.read_jsonl(work / "metrics.jsonl"), "step0_check")
  assert len(check) == 1 and check[0]["abs_diff"] <= 1e-5 * check[0]["recorded"], check
  r = helpers.run_main(helpers.FORCE, "--allow_config_change",
                       *helpers.tiny_flags(prepared_data, _two_layers(**SWITCHED)), workdir=work)
  assert r.rc == 0, r.stderr[-3000:]
  checks = helpers.events(helpers.read_jsonl(work / "metrics.jsonl"), "step0_check")
  assert len(checks) == 2 and checks[1]["abs_diff"] <= 1e-5 * checks[1]["recorded"], checks
  assert helpers.checkpoint_steps(work)[-1] == 20


def test_scanned_run_resumes_bitwise(scanned, tmp_path, prepared_data):
  """The scanned run, lost after its step-10 save and re-run (restore in the stored layout,
  then stacked again with its Adam moments), ends bit for bit where it ended uninterrupted."""
  split = Path(shutil.copytree(scanned, tmp_path / "split"))
  shutil.rmtree(split / "checkpoints" / "20")
  r = helpers.run_main(helpers.FORCE, *helpers.tiny_flags(prepared_data, _two_layers(**SWITCHED)),
                       workdir=split)
  assert r.rc == 0, r.stderr[-3000:]
  assert helpers.checkpoint_steps(split)[-1] == 20
  got, want = (helpers.flat(helpers.load_params(w, 20)) for w in (split, scanned))
  assert got.keys() == want.keys() and any(k.startswith("blocks/1/") for k in want)
  for path in want:
    assert np.array_equal(got[path], want[path]), f"{path} differs after resume"


def test_scan_layers_default_is_by_platform():
  """Unset (None), training scans on accelerators and unrolls on CPU (where the scanned step
  measured 1.44x slower at the default experiment); an explicit value wins everywhere."""
  cfg = _cfg()
  assert cfg.scan_layers is None
  assert not cfg.layers_scanned("cpu")
  assert cfg.layers_scanned("gpu") and cfg.layers_scanned("tpu")
  assert not _cfg(scan_layers=False).layers_scanned("gpu")
  assert _cfg(scan_layers=True).layers_scanned("cpu")
  assert not TrainSetup.build(cfg, optax.sgd(1.0), 0, sharding.make_mesh((1, 1, 1))).stacked
