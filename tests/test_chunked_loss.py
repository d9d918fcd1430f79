"""Chunked cross-entropy equals the full one (loss and gradients), also when the tiles do not
divide the sequence, and its compiled temporary memory falls with the tile size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.config import ModelConfig
from models.loss import chunked_cross_entropy, cross_entropy
from models.matmul import head_logits
from models.params import abstract_model
from train.state import step as step_lib


def _inputs(b, t, d, v, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(b, t, d)), dtype)
  w = jnp.asarray(rng.normal(size=(d, v)) * 0.3, jnp.float32)
  targets = jnp.asarray(rng.integers(0, v, (b, t)), jnp.int32)
  return x, w, targets


def _full(x, w, targets):
  return cross_entropy(head_logits(x, w), targets)


def _value_and_grads(fn, x, w, targets):
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(x, w, targets)


@pytest.mark.parametrize("chunk", [1, 5, 12, 64])
def test_chunked_equals_full_float32(chunk):
  """chunk 5 over T = 12: three tiles, the last one padded (B*T = 36 tokens, not a multiple
  of the 15-token tile); 64 > T: one tile."""
  x, w, targets = _inputs(3, 12, 16, 50)
  ref_loss, ref_grads = _value_and_grads(_full, x, w, targets)
  loss, grads = _value_and_grads(lambda x, w, t: chunked_cross_entropy(x, w, t, chunk),
                                 x, w, targets)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
  for g, r in zip(grads, ref_grads):
    assert g.dtype == r.dtype and g.shape == r.shape
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)
  assert float(jnp.abs(ref_grads[0]).max()) > 1e-3


def test_chunked_equals_full_bf16():
  """bf16 activations: same rounding points (bf16 logit cotangent) in both paths."""
  x, w, targets = _inputs(2, 10, 16, 40, dtype=jnp.bfloat16, seed=1)
  ref_loss, ref_grads = _value_and_grads(_full, x, w, targets)
  loss, grads = _value_and_grads(lambda x, w, t: chunked_cross_entropy(x, w, t, 3),
                                 x, w, targets)
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    assert g.dtype == r.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                               rtol=2e-2, atol=2e-2 * float(jnp.abs(r.astype(jnp.float32)).max()))


@pytest.mark.parametrize("tied", [True, False])
def test_model_loss_with_loss_chunk_equals_full(tied):
  """The train step's loss (model.loss_chunk) gives the full loss's value and every
  parameter gradient, tied and untied head."""
  base = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
              max_seq_len=16, tie_embeddings=tied)
  graphdef, state = nnx.split(abstract_model(ModelConfig(**base)))
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda s: jnp.asarray((1.0 if len(s.shape) == 1 else 0.0)
                                              + rng.normal(0.0, 0.1, s.shape), s.dtype),
                        nnx.to_pure_dict(state))
  toks = rng.integers(0, 61, (2, 17))
  batch = {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
           "targets": jnp.asarray(toks[:, 1:], jnp.int32)}
  out = {}
  for chunk in (0, 6):
    gd = nnx.split(abstract_model(ModelConfig(**base, loss_chunk=chunk)))[0]
    out[chunk] = jax.jit(jax.value_and_grad(step_lib.make_loss_fn(gd)))(params, batch)
  np.testing.assert_allclose(float(out[6][0]), float(out[0][0]), rtol=1e-6)
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(out[6][1]),
                          jax.tree.leaves(out[0][1])):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))
  del graphdef


def _temp_bytes(fn, b, t, d, v) -> int:
  args = (jax.ShapeDtypeStruct((b, t, d), jnp.bfloat16), jax.ShapeDtypeStruct((d, v), jnp.float32),
          jax.ShapeDtypeStruct((b, t), jnp.int32))
  compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("b, t, d, v", [(4, 512, 64, 32_000), (2, 256, 32, 151_936)])
def test_temp_memory_falls_with_tile_size(b, t, d, v):
  """Compiled (not run) loss + gradients: the full path holds [B, T, V] float32 logits (and
  their gradient); tiles of c positions hold [B, c, V]. Temporaries fall with every halving."""
  full = _temp_bytes(_full, b, t, d, v)
  logits = b * t * v * 4
  assert full >= logits
  temps = {c: _temp_bytes(lambda x, w, tg, c=c: chunked_cross_entropy(x, w, tg, c), b, t, d, v)
           for c in (t // 4, t // 16, t // 64)}
  sizes = [full] + list(temps.values())
  assert all(a > b_ for a, b_ in zip(sizes, sizes[1:])), sizes
  # The smallest tile needs a fraction of the full path's memory; what remains is mostly the
  # head's float32 gradient accumulator [D, V] and the bf16 copy of the head.
  assert temps[t // 64] < full / 4, (temps, full)
