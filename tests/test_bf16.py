"""bf16 done properly: a bf16 train step's dense projections and LM head take bf16 x bf16
inputs forward AND backward (before: 74 of the nanoGPT shape's 111 dot_generals were
float32 x bf16); float32 compute is unchanged; the loss stays close to float32's.

Counted in the step's jaxpr (what XLA is handed), nested jaxprs included. Attention's score
and value products (dot_generals with batch dimensions) are the attention kernel's internals:
the einsum path's backward keeps float32 x bf16 there (16 on this shape); on GPU the cuDNN
kernel replaces them (scripts/gpu_bench.py counts the fused calls and float32 GEMMs).
"""
import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import nanogpt_shakespeare_char_cpu
from models import matmul
from models.config import ModelConfig
from train.state import flops
from train.state import step as step_lib

BF16, F32 = "bfloat16", "float32"


def _step_jaxpr(dtype: str, grad_accum: int = 1, **model_over):
  config = nanogpt_shakespeare_char_cpu.get_config()
  config.model.update(dtype=dtype, **model_over)
  cfg = ModelConfig.from_dict(config.model.to_dict())
  tx = step_lib.make_optimizer(config)
  graphdef, init = step_lib.init_fn(cfg, tx, 0)
  batch = {k: jax.ShapeDtypeStruct((12, 64), jnp.int32) for k in ("inputs", "targets")}
  step = step_lib.make_train_step(graphdef, tx, step_lib.lr_schedule(config), grad_accum)
  return cfg, jax.make_jaxpr(step)(jax.eval_shape(init), batch)


def _dense_dots(sigs) -> dict:
  """(lhs, rhs, out) -> count over dot_generals without batch dims (projections and head)."""
  out: dict = {}
  for (lhs, rhs, res, batched), n in sigs.items():
    if not batched:
      out[(lhs, rhs, res)] = out.get((lhs, rhs, res), 0) + n
  return out


@pytest.mark.parametrize("over", [
    {},
    {"remat": "full"},
    {"remat": "minimal_with_context", "scan_layers": True},
    {"loss_chunk": 16},
    {"tie_embeddings": False, "attention": "xla"},
])
def test_bf16_step_has_no_mixed_precision_dense_matmuls(over):
  """Every projection and LM-head matmul, forward and backward, is bf16 x bf16; there are
  exactly 3 per weight matrix (forward, input gradient, weight gradient)."""
  cfg, jaxpr = _step_jaxpr(BF16, **over)
  dense = _dense_dots(flops.dot_signatures(jaxpr))
  mixed = {k: n for k, n in dense.items() if k[0] != k[1] or F32 in k[:2]}
  assert not mixed, mixed
  layers = 1 if cfg.layers_scanned() else cfg.n_layers  # a scanned block appears once
  per_pass = 7 * layers + 1  # q, k, v, o, gate, up, down per layer; the head
  forward_passes = 2 if cfg.remat != "none" else 1  # remat recomputes the forward
  recomputed_head = 1 if cfg.loss_chunk else 0  # the chunked loss recomputes its logits
  n = sum(dense.values())
  assert 3 * per_pass <= n <= (2 + forward_passes) * per_pass + recomputed_head, dense


def test_grad_accum_bf16_step_is_clean_too():
  _, jaxpr = _step_jaxpr(BF16, grad_accum=2)
  dense = _dense_dots(flops.dot_signatures(jaxpr))
  assert set(dense) == {(BF16, BF16, F32)}, dense  # XLA:CPU form: bf16 in, f32 out, rounded


def test_float32_step_is_plain_float32():
  """Float32 compute: plain f32 x f32 matmuls, no custom VJP in the way (numerics unchanged)."""
  _, jaxpr = _step_jaxpr(F32)
  assert set(flops.dot_signatures(jaxpr)) <= {(F32, F32, F32, False), (F32, F32, F32, True)}
  assert "custom_vjp_call" not in str(jaxpr)


@pytest.mark.parametrize("platform, fwd_out", [("cpu", F32), ("gpu", BF16), ("tpu", BF16)])
def test_matmul_forms_per_platform(platform, fwd_out):
  """GPU/TPU: bf16 in, bf16 out (f32 accumulation inside the GEMM); XLA:CPU: bf16 in, f32 out
  then rounded (its bf16-output dots are upcast to f32 x f32). Weight grads in f32 always."""
  emit = matmul.emit_dtype(jnp.bfloat16, platform)
  x = jnp.ones((4, 8, 16), jnp.bfloat16)
  w = jnp.ones((16, 32), jnp.float32)
  loss = lambda x, w: jnp.sum(matmul._matmul(x, w, jnp.dtype(BF16), emit).astype(jnp.float32))
  sigs = flops.dot_signatures(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w))
  want = collections.Counter({(BF16, BF16, fwd_out, False): 2})  # forward, input gradient
  want[(BF16, BF16, F32, False)] += 1  # weight gradient
  assert sigs == want, sigs


def test_custom_vjp_gradients_equal_autodiff():
  """The bf16 backward equals autodiff of the same bf16 forward (up to bf16 rounding)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 16)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(16, 24)) * 0.1, jnp.float32)
  t = jnp.asarray(rng.normal(size=(3, 5, 24)), jnp.float32)

  def loss(f):
    return lambda x, w: jnp.sum((f(x, w).astype(jnp.float32) - t) ** 2)

  ref = lambda x, w: jnp.dot(x.astype(F32), w, preferred_element_type=F32)
  for f in (lambda x, w: matmul.dense(x, w, jnp.bfloat16), matmul.head_logits):
    got = jax.grad(loss(f), argnums=(0, 1))(x, w)
    want = jax.grad(loss(ref), argnums=(0, 1))(x, w)
    for g, r in zip(got, want):
      assert g.dtype == r.dtype
      np.testing.assert_allclose(np.asarray(g, F32), np.asarray(r, F32), rtol=0.05,
                                 atol=0.05 * float(jnp.abs(r).max()))


def test_bf16_loss_close_to_float32():
  """Same parameters, same batch: bf16 compute moves the loss by well under 1%."""
  config = nanogpt_shakespeare_char_cpu.get_config()
  toks = np.random.default_rng(0).integers(0, 65, (4, 65))
  batch = {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
           "targets": jnp.asarray(toks[:, 1:], jnp.int32)}
  losses = {}
  for dtype in (F32, BF16):
    config.model.dtype = dtype
    cfg = ModelConfig.from_dict(config.model.to_dict())
    graphdef, init = step_lib.init_fn(cfg, step_lib.make_optimizer(config), 0)
    params = jax.jit(init)().params
    losses[dtype] = float(jax.jit(step_lib.make_loss_fn(graphdef))(params, batch))
  assert abs(losses[BF16] - losses[F32]) < 1e-2 * losses[F32], losses
