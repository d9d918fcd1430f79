"""Attention by backend: the dot_product_attention path (implementation="xla", what cudnn's API
runs on CPU) computes today's einsum attention, `auto` picks per platform, decode still matches.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import attention
from models.config import ModelConfig, ModelConfigError
from models.params import abstract_model
from train.state import step as step_lib

BASE = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
            max_seq_len=16)
B, T = 2, 16


def _cfg(**over) -> ModelConfig:
  return ModelConfig(**{**BASE, **over})


def _params(cfg: ModelConfig, seed: int = 0):
  """numpy-random weights in the real parameter tree (no init compile)."""
  graphdef, state = nnx.split(abstract_model(cfg))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: jnp.asarray((1.0 if len(s.shape) == 1 else 0.0)
                                              + rng.normal(0.0, 0.1, s.shape), s.dtype),
                        nnx.to_pure_dict(state))
  return graphdef, params


def _batch(seed=0):
  toks = np.random.default_rng(seed).integers(0, BASE["vocab_size"], (B, T + 1))
  return {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
          "targets": jnp.asarray(toks[:, 1:], jnp.int32)}


def _loss_and_grads(cfg: ModelConfig, params_from: ModelConfig | None = None):
  graphdef, params = _params(params_from or cfg)
  graphdef = nnx.split(abstract_model(cfg))[0]
  return jax.jit(jax.value_and_grad(step_lib.make_loss_fn(graphdef)))(params, _batch())


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_dot_product_attention_path_equals_einsum(kv):
  """Loss and every gradient of the jax.nn.dot_product_attention path equal today's einsum
  attention within 1e-5 (float32), for MQA, GQA and MHA."""
  ref_loss, ref_grads = _loss_and_grads(_cfg(n_kv_heads=kv, attention="einsum"))
  loss, grads = _loss_and_grads(_cfg(n_kv_heads=kv, attention="xla"))
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5, atol=1e-5)
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  assert float(jnp.abs(ref_grads["embed"]).max()) > 1e-3  # the gradients are not all ~0


def _dot_operand_shapes(cfg: ModelConfig) -> set[tuple[int, ...]]:
  graphdef, params = _params(cfg)
  jaxpr = jax.make_jaxpr(lambda p, x: nnx.merge(graphdef, p)(x))(params, _batch()["inputs"])
  return {tuple(v.aval.shape) for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"
          for v in e.invars}


def test_xla_path_uses_native_gqa():
  """The xla path contracts queries with the single shared K/V head (MQA) directly; the einsum
  path repeats K/V to every query head first."""
  kv_shape = (B, T, 1, BASE["d_model"] // BASE["n_heads"])
  assert kv_shape in _dot_operand_shapes(_cfg(attention="xla", n_kv_heads=1))
  assert kv_shape not in _dot_operand_shapes(_cfg(attention="einsum", n_kv_heads=1))


@pytest.mark.parametrize("platform, over, want", [
    ("cpu", {}, "einsum"),
    ("cpu", dict(dtype="bfloat16"), "einsum"),
    ("gpu", dict(dtype="bfloat16"), "cudnn"),
    ("cuda", dict(dtype="float16"), "cudnn"),
    ("gpu", {}, "xla"),  # float32: cuDNN's fused kernel takes bf16/fp16 only
    ("gpu", dict(dtype="bfloat16", d_model=48, n_heads=4, n_kv_heads=2), "xla"),  # head_dim 12
    ("tpu", dict(dtype="bfloat16"), "xla"),
    ("gpu", dict(attention="einsum", dtype="bfloat16"), "einsum"),
    ("cpu", dict(attention="xla"), "xla"),
])
def test_auto_picks_per_platform(platform, over, want):
  assert attention.resolve(_cfg(**over), platform) == want


def test_auto_on_this_host_is_the_cpu_einsum():
  """On this CPU host `auto` is the einsum path, bit for bit."""
  assert jax.default_backend() == "cpu"
  assert attention.resolve(_cfg()) == "einsum"
  auto, _ = _loss_and_grads(_cfg())
  einsum, _ = _loss_and_grads(_cfg(attention="einsum"))
  assert float(auto) == float(einsum)


def test_cudnn_problems_name_the_fix():
  assert attention.problems(_cfg(attention="cudnn", dtype="bfloat16"), "gpu") == []
  cpu = attention.problems(_cfg(attention="cudnn", dtype="bfloat16"), "cpu")
  assert len(cpu) == 1 and "needs an NVIDIA GPU" in cpu[0] and "model.attention=auto" in cpu[0]
  f32 = attention.problems(_cfg(attention="cudnn"), "gpu")
  assert len(f32) == 1 and "bfloat16/float16" in f32[0]
  assert attention.problems(_cfg(), "gpu") == []  # auto never picks what cannot run
  with pytest.raises(ModelConfigError, match="model.attention"):
    _cfg(attention="flash")


@pytest.mark.parametrize("impl", ["xla", "einsum"])
def test_decode_with_cache_matches_full_forward(impl):
  """The full forward (by `impl`) and prefill + token-by-token KV-cache decode (einsum, every
  platform) give the same logits at every position."""
  cfg = _cfg(attention=impl)
  graphdef, params = _params(cfg, seed=3)
  model = nnx.merge(graphdef, params)
  tokens = _batch(seed=4)["inputs"]
  full = jax.jit(lambda m, x: m(x))(model, tokens)
  decode = jax.jit(lambda m, x, c, i: m.decode(x, caches=c, cache_index=i))
  logits, caches = decode(model, tokens[:, :3], model.init_cache(B, T), 0)
  np.testing.assert_allclose(logits, full[:, :3], atol=1e-5)
  for i in range(3, T):
    step_logits, caches = decode(model, tokens[:, i:i + 1], caches, jnp.int32(i))
    np.testing.assert_allclose(step_logits[:, 0], full[:, i], atol=1e-5, err_msg=f"pos {i}")
