"""A Llama-family decoder-only transformer in Flax NNX.

Pre-norm RMSNorm, rotary position embeddings, grouped-query causal attention, SwiGLU MLP, final
norm, tied or untied LM head; no biases except on the q/k/v projections of the Qwen2 family.
Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `mlp`,
`norm`) that mesh rules map to devices; matmuls accumulate in float32 and softmax/logits are
float32 whatever the compute dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.config import ModelConfig

_INIT_STD = 0.02
KV = tuple[jax.Array, jax.Array]


def _normal(std: float, names: tuple[str | None, ...]) -> nnx.Initializer:
  return nnx.with_partitioning(nnx.initializers.normal(stddev=std), names)


class Dense(nnx.Module):
  """Projection whose matmul accumulates in float32 (bf16 inputs, f32 sums); bias-free unless
  `bias` (Qwen2's q/k/v), whose zero-initialised bias is added to the float32 sums."""

  def __init__(self, d_in: int, d_out: int, names: tuple[str, str], cfg: ModelConfig, *,
               std: float = _INIT_STD, bias: bool = False, rngs: nnx.Rngs):
    init = _normal(std, names)
    self.kernel = nnx.Param(init(rngs.params(), (d_in, d_out), cfg.params_dtype))
    if bias:
      zeros = nnx.with_partitioning(nnx.initializers.zeros, (names[1],))
      self.bias = nnx.Param(zeros(rngs.params(), (d_out,), cfg.params_dtype))
    self.has_bias = bias
    self.dtype = cfg.compute_dtype

  def __call__(self, x: jax.Array, out_dtype: jnp.dtype | None = None) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                preferred_element_type=jnp.float32)
    if self.has_bias:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(out_dtype or self.dtype)


class RMSNorm(nnx.Module):
  """Root-mean-square norm with statistics in float32."""

  def __init__(self, dim: int, cfg: ModelConfig):
    init = nnx.with_partitioning(nnx.initializers.ones, ("norm",))
    self.scale = nnx.Param(init(jax.random.key(0), (dim,), cfg.params_dtype))
    self.eps = cfg.norm_eps
    self.dtype = cfg.compute_dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def rope_table(length: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
  """cos/sin [length, head_dim/2] float32 for positions 0..length-1.

  Computed in float64 with numpy, so they enter the program as constants: traced trig was
  fused into every RoPE loop and recomputed per head and batch row (~10% of a CPU step).
  """
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotate [B, T, heads, head_dim] by position (half-split convention, as in HF Llama)."""
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Grouped-query attention. q [B,T,H,D], k/v [B,S,KV,D], mask [B|1,T,S] bool -> [B,T,H,D].

  Each group of H/KV query heads shares one key/value head (repeated here: plain 4-D
  contractions ran 2x faster on XLA:CPU than a grouped 5-D einsum); scores and softmax run in
  float32. Masked scores are selected away inside the softmax fusion (an additive bias was
  materialized as a [B,H,T,S] array every step).
  """
  groups = q.shape[2] // k.shape[2]
  if groups > 1:
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32)
  scores = jnp.where(mask[:, None], scores * (q.shape[-1] ** -0.5), -1e30)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bhts,bshd->bthd", probs, v, preferred_element_type=jnp.float32)
  return out.astype(v.dtype)


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    hd, resid_std = cfg.head_dim, _INIT_STD / (2 * cfg.n_layers) ** 0.5
    self.cfg = cfg
    bias = cfg.qkv_bias
    self.wq = Dense(cfg.d_model, cfg.n_heads * hd, ("embed", "heads"), cfg, bias=bias, rngs=rngs)
    self.wk = Dense(cfg.d_model, cfg.n_kv_heads * hd, ("embed", "kv_heads"), cfg, bias=bias,
                    rngs=rngs)
    self.wv = Dense(cfg.d_model, cfg.n_kv_heads * hd, ("embed", "kv_heads"), cfg, bias=bias,
                    rngs=rngs)
    self.wo = Dense(cfg.n_heads * hd, cfg.d_model, ("heads", "embed"), cfg, std=resid_std,
                    rngs=rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
               cache: KV | None = None, cache_index: jax.Array | None = None
               ) -> tuple[jax.Array, KV | None]:
    b, t, _ = x.shape
    hd = self.cfg.head_dim
    q = apply_rope(self.wq(x).reshape(b, t, self.cfg.n_heads, hd), cos, sin)
    k = apply_rope(self.wk(x).reshape(b, t, self.cfg.n_kv_heads, hd), cos, sin)
    v = self.wv(x).reshape(b, t, self.cfg.n_kv_heads, hd)
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, 1)
      v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, 1)
      cache = (k, v)
    out = attend(q, k, v, mask)
    return self.wo(out.reshape(b, t, self.cfg.n_heads * hd)), cache


class SwiGLU(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    resid_std = _INIT_STD / (2 * cfg.n_layers) ** 0.5
    self.w_gate = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), cfg, rngs=rngs)
    self.w_up = Dense(cfg.d_model, cfg.d_ff, ("embed", "mlp"), cfg, rngs=rngs)
    self.w_down = Dense(cfg.d_ff, cfg.d_model, ("mlp", "embed"), cfg, std=resid_std, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """The gate runs in float32 and is rounded once (bf16 SiLU rounded after every op)."""
    f32 = jnp.float32
    return self.w_down(jax.nn.silu(self.w_gate(x, f32)) * self.w_up(x, f32))


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg)
    self.mlp = SwiGLU(cfg, rngs=rngs)

  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
    h, cache = self.attn(self.attn_norm(x), cos, sin, mask, cache, cache_index)
    x = x + h
    return x + self.mlp(self.mlp_norm(x)), cache


def _remat_block(policy: str):
  """Recompute a block's activations in the backward pass instead of storing them; with
  dots_saveable, matmul outputs are kept and only cheap elementwise work is recomputed."""
  saveable = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  return nnx.remat(lambda block, *args: block(*args),
                   policy=saveable if policy == "dots_saveable" else None)


class Transformer(nnx.Module):
  """Decoder-only LM: tokens [B, T] int -> logits [B, T, vocab] float32."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    embed_init = _normal(_INIT_STD, ("vocab", "embed"))
    self.embed = nnx.Param(embed_init(rngs.params(), (cfg.vocab_size, cfg.d_model),
                                      cfg.params_dtype))
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg)
    if not cfg.tie_embeddings:
      self.lm_head = Dense(cfg.d_model, cfg.vocab_size, ("embed", "vocab"), cfg, rngs=rngs)

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    """Full causal forward pass."""
    return self.decode(tokens, positions)[0]

  def init_cache(self, batch: int, length: int) -> list[KV]:
    """Zeroed key/value buffers for `length` positions, one pair per layer."""
    shape = (batch, length, self.cfg.n_kv_heads, self.cfg.head_dim)
    zeros = jnp.zeros(shape, self.cfg.compute_dtype)
    return [(zeros, zeros) for _ in range(self.cfg.n_layers)]

  def decode(self, tokens: jax.Array, positions: jax.Array | None = None,
             caches: list[KV] | None = None, cache_index: jax.Array | None = None
             ) -> tuple[jax.Array, list[KV] | None]:
    """Forward pass; with `caches`, writes keys/values at `cache_index` and attends to all
    cached positions <= each query's position. Returns (float32 logits, updated caches)."""
    b, t = tokens.shape
    cfg = self.cfg
    x = jnp.take(self.embed[...], tokens, axis=0).astype(cfg.compute_dtype)
    cos, sin = rope_table(max(cfg.max_seq_len, t), cfg.head_dim, cfg.rope_theta)
    if positions is None and caches is None:
      cos, sin = cos[None, :t], sin[None, :t]
    else:
      if positions is None:
        positions = jnp.broadcast_to(cache_index + jnp.arange(t), (b, t))
      cos, sin = jnp.take(cos, positions, axis=0), jnp.take(sin, positions, axis=0)
    if caches is None:
      mask = np.tril(np.ones((t, t), dtype=bool))[None]
    else:
      mask = jnp.arange(caches[0][0].shape[1])[None, None, :] <= positions[:, :, None]
    new_caches = None if caches is None else []
    for i, block in enumerate(self.blocks):
      if caches is None and self.cfg.remat != "none":
        x, cache = _remat_block(self.cfg.remat)(block, x, cos, sin, mask)
        continue
      x, cache = block(x, cos, sin, mask, None if caches is None else caches[i], cache_index)
      if new_caches is not None:
        new_caches.append(cache)
    x = self.final_norm(x)
    head = self.embed[...].T if self.cfg.tie_embeddings else self.lm_head.kernel[...]
    logits = jnp.dot(x, head.astype(x.dtype), preferred_element_type=jnp.float32)
    return logits, new_caches
