"""A Llama-family decoder-only transformer in Flax NNX.

Pre-norm RMSNorm, rotary position embeddings, grouped-query causal attention, SwiGLU MLP, final
norm, tied or untied LM head; no biases except on the q/k/v projections of the Qwen2
family. Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv_heads`,
`mlp`, `norm`) that mesh rules map to devices. Matmuls take and give the compute dtype
(float32 accumulation is the hardware's, so a bf16 backward pass runs bf16 GEMMs); norms,
softmax and logits are float32 whatever the compute dtype. Execution-only choices
(attention backend, remat policy) never change the parameter tree. The blocks are stored per
layer (`blocks/<i>/...`, every checkpoint's layout) or, built with `stacked=True`, as one Block
whose every parameter has a leading layer axis, which the forward pass scans over (the training
layout of `model.scan_layers`; `stack_blocks` converts exactly).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from models import attention as attention_lib
from models.attention import attend
from models.config import ModelConfig
from models.matmul import dense, head_logits
from models.sharding_hook import constrain

_INIT_STD = 0.02
KV = tuple[jax.Array, jax.Array]
# The batch arrays of packed documents (train/data/documents.py), named as the forward pass's
# arguments: a batch that carries them is run with them.
POSITIONS, SEGMENT_IDS = "positions", "segment_ids"


def packed(batch: Mapping[str, Any]) -> dict[str, Any]:
  """The packed-document keyword arguments of the forward pass that `batch` carries."""
  return {k: batch[k] for k in (POSITIONS, SEGMENT_IDS) if k in batch}


def _normal(std: float, names: tuple[str | None, ...]) -> nnx.Initializer:
  return nnx.with_partitioning(nnx.initializers.normal(stddev=std), names)


class Dense(nnx.Module):
  """Projection in the compute dtype, forward and backward (models/matmul.py); bias-free
  unless `bias` (Qwen2's q/k/v), whose zero-initialised bias is added in that dtype."""

  def __init__(self, d_in: int, d_out: int, names: tuple[str, str], cfg: ModelConfig, *,
               std: float = _INIT_STD, bias: bool = False, rngs: nnx.Rngs):
    init = _normal(std, names)
    self.kernel = nnx.Param(init(rngs.params(), (d_in, d_out), cfg.params_dtype))
    if bias:
      zeros = nnx.with_partitioning(nnx.initializers.zeros, (names[1],))
      self.bias = nnx.Param(zeros(rngs.params(), (d_out,), cfg.params_dtype))
    self.has_bias = bias
    self.dtype = cfg.compute_dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = dense(x, self.kernel[...], self.dtype)
    return y + self.bias[...].astype(y.dtype) if self.has_bias else y


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
               cache: KV | None = None, cache_index: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, KV | None]:
    b, t, _ = x.shape
    hd = self.cfg.head_dim
    q = apply_rope(self.wq(x).reshape(b, t, self.cfg.n_heads, hd), cos, sin)
    k = apply_rope(self.wk(x).reshape(b, t, self.cfg.n_kv_heads, hd), cos, sin)
    v = self.wv(x).reshape(b, t, self.cfg.n_kv_heads, hd)
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, 1)
      v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, 1)
      cache = (k, v)
    if mask is None:
      out = attention_lib.causal_attention(q, k, v, attention_lib.resolve(self.cfg),
                                           segment_ids)
    else:
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
    gate = checkpoint_name(self.w_gate(x), "mlpwi_0")
    up = checkpoint_name(self.w_up(x), "mlpwi_1")
    return checkpoint_name(self.w_down(jax.nn.silu(gate.astype(f32)) * up.astype(f32)), "mlpwo")


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg)
    self.mlp = SwiGLU(cfg, rngs=rngs)

  def __call__(self, x, cos, sin, mask, cache=None, cache_index=None, segment_ids=None):
    """mask None: full causal self-attention by the configured backend (no KV cache), within
    each packed document when `segment_ids` are given."""
    h, cache = self.attn(self.attn_norm(x), cos, sin, mask, cache, cache_index, segment_ids)
    x = x + checkpoint_name(h, "out_proj")
    return x + self.mlp(self.mlp_norm(x)), cache


# What `minimal_with_context` keeps (MaxText's names): every projection and the attention
# output, so the backward recomputes only norms, RoPE, SiLU, and never the attention.
SAVED_ACTIVATIONS = ("query_proj", "key_proj", "value_proj", "context", "out_proj", "mlpwi_0",
                     "mlpwi_1", "mlpwo")


def remat_policy(name: str):
  """jax.checkpoint policy of a remat setting: full recomputes everything; dots_saveable keeps
  matmul outputs; minimal_with_context keeps the named activations above."""
  return {"full": None,
          "dots_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
          "minimal_with_context": jax.checkpoint_policies.save_only_these_names(
              *SAVED_ACTIVATIONS)}[name]


def _remat_block(policy: str):
  """Recompute a block's activations in the backward pass instead of storing them."""
  return nnx.remat(lambda block, *args: block(*args), policy=remat_policy(policy))


def stack_blocks(blocks: list[Block]) -> Block:
  """One Block whose parameters are the given blocks' stacked on a leading layer axis (an
  exact copy; each parameter's logical axis names gain a leading None: layers are never
  split over devices)."""
  graphdef, _ = nnx.split(blocks[0])

  def stack(*vs: nnx.Variable) -> nnx.Variable:
    names = vs[0].get_metadata().get("out_sharding")
    return vs[0].replace(jnp.stack([v.get_value() for v in vs]),
                         out_sharding=(None, *names) if names else names)

  state = jax.tree.map(stack, *(nnx.state(b) for b in blocks),
                       is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.merge(graphdef, state)


class Transformer(nnx.Module):
  """Decoder-only LM: tokens [B, T] int -> logits [B, T, vocab] float32.

  `stacked`: hold the blocks as one stacked Block and run them with one lax.scan (the program
  holds one block however deep the model); the initial values equal the per-layer model's for
  the same rngs.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, stacked: bool = False):
    self.cfg = cfg
    self.stacked = stacked
    embed_init = _normal(_INIT_STD, ("vocab", "embed"))
    self.embed = nnx.Param(embed_init(rngs.params(), (cfg.vocab_size, cfg.d_model),
                                      cfg.params_dtype))
    blocks = [Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)]
    self.blocks = stack_blocks(blocks) if stacked else nnx.List(blocks)
    self.final_norm = RMSNorm(cfg.d_model, cfg)
    if not cfg.tie_embeddings:
      self.lm_head = Dense(cfg.d_model, cfg.vocab_size, ("embed", "vocab"), cfg, rngs=rngs)

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    """Full causal forward pass: float32 logits. `positions` [B, T]: RoPE positions (default
    0..T-1); `segment_ids` [B, T]: packed documents, each attending only to itself."""
    return head_logits(self.hidden(tokens, positions, segment_ids), self.head())

  def head(self) -> jax.Array:
    """The LM head kernel [d_model, vocab] in the parameter dtype (embed.T when tied)."""
    return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head.kernel[...]

  def hidden(self, tokens: jax.Array, positions: jax.Array | None = None,
             segment_ids: jax.Array | None = None) -> jax.Array:
    """Final-normed hidden states [B, T, d_model] of the full causal pass, compute dtype."""
    x = self._embed(tokens)
    cos, sin = self._rope(tokens.shape[1], positions)
    run = self._scanned_blocks if self.stacked else self._unrolled_blocks
    return self.final_norm(run(x, cos, sin, segment_ids))

  def _embed(self, tokens: jax.Array) -> jax.Array:
    return constrain(jnp.take(self.embed[...], tokens, axis=0).astype(self.cfg.compute_dtype))

  def _rope(self, length: int, positions: jax.Array | None):
    """cos/sin rows for positions [B, T], or constants [1, T] for 0..T-1 when positions is None."""
    cos, sin = rope_table(max(self.cfg.max_seq_len, length), self.cfg.head_dim,
                          self.cfg.rope_theta)
    if positions is None:
      return cos[None, :length], sin[None, :length]
    return jnp.take(cos, positions, axis=0), jnp.take(sin, positions, axis=0)

  def _unrolled_blocks(self, x: jax.Array, cos, sin, segment_ids) -> jax.Array:
    for block in self.blocks:
      if self.cfg.remat == "none":
        x, _ = block(x, cos, sin, None, None, None, segment_ids)
      else:
        x, _ = _remat_block(self.cfg.remat)(block, x, cos, sin, None, None, None, segment_ids)
      x = constrain(x)
    return x

  def _scanned_blocks(self, x: jax.Array, cos, sin, segment_ids) -> jax.Array:
    """One lax.scan over the stacked blocks: each iteration reads its layer's slice."""
    graphdef, stacked = nnx.split(self.blocks)

    def body(h: jax.Array, layer: nnx.State):
      h, _ = nnx.merge(graphdef, layer)(h, cos, sin, None, None, None, segment_ids)
      return constrain(h), None

    if self.cfg.remat != "none":
      body = jax.checkpoint(body, policy=remat_policy(self.cfg.remat), prevent_cse=False)
    return jax.lax.scan(body, x, stacked)[0]

  def layers(self) -> list[Block]:
    """The blocks one per layer (slices of the stack when stacked)."""
    if not self.stacked:
      return list(self.blocks)
    graphdef, state = nnx.split(self.blocks)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
            for i in range(self.cfg.n_layers)]

  def init_cache(self, batch: int, length: int) -> list[KV]:
    """Zeroed key/value buffers for `length` positions, one pair per layer."""
    shape = (batch, length, self.cfg.n_kv_heads, self.cfg.head_dim)
    zeros = jnp.zeros(shape, self.cfg.compute_dtype)
    return [(zeros, zeros) for _ in range(self.cfg.n_layers)]

  def decode(self, tokens: jax.Array, positions: jax.Array | None = None,
             caches: list[KV] | None = None, cache_index: jax.Array | None = None
             ) -> tuple[jax.Array, list[KV] | None]:
    """Forward pass; with `caches`, writes keys/values at `cache_index` and attends to all
    cached positions <= each query's position (the einsum path, on every platform). Returns
    (float32 logits, updated caches)."""
    if caches is None:
      return self(tokens, positions), None
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(cache_index + jnp.arange(t), (b, t))
    length = caches[0][0].shape[1]
    cos, sin = self._rope(max(length, t), positions)
    mask = jnp.arange(length)[None, None, :] <= positions[:, :, None]
    x = self._embed(tokens)
    new_caches = []
    for block, cache in zip(self.layers(), caches):
      x, cache = block(x, cos, sin, mask, cache, cache_index)
      new_caches.append(cache)
    return head_logits(self.final_norm(x), self.head()), new_caches
