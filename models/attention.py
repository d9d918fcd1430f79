"""Causal grouped-query attention by backend: what each platform runs fastest.

`einsum` is the plain 4-D form that XLA:CPU runs fastest; `xla` and `cudnn` call
`jax.nn.dot_product_attention(..., is_causal=True)` with native GQA (no K/V repeat, no T x T
mask constant), `cudnn` being the fused flash kernel of NVIDIA GPUs. `auto` picks per platform
at trace time. Decoding with a KV cache always uses `attend`, which works everywhere.

Packed documents (segment ids [B, T], train/data/documents.py) are honoured by every path:
einsum ands the causal mask with "same segment"; xla and cudnn pass that [B, 1, T, T] mask to
`jax.nn.dot_product_attention(mask=..., is_causal=True)`, which the pinned JAX applies as a
select (xla) or turns into an additive bias for the fused kernel (cudnn).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from models.config import ModelConfig

_CUDNN_DTYPES = ("bfloat16", "float16")


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


def cudnn_problems(cfg: ModelConfig) -> list[str]:
  """Why cuDNN's fused attention cannot run this model (empty if it can)."""
  out = []
  if cfg.dtype not in _CUDNN_DTYPES:
    out.append(f"model.dtype={cfg.dtype!r}: cuDNN attention takes bfloat16/float16 only")
  if cfg.head_dim % 8 or cfg.head_dim > 256:
    out.append(f"head_dim={cfg.head_dim}: cuDNN attention needs a multiple of 8, at most 256")
  return out


def resolve(cfg: ModelConfig, platform: str | None = None) -> str:
  """The implementation `cfg.attention` means on `platform` (default: JAX's default backend).

  auto: einsum on CPU (measured fastest there), cudnn on an NVIDIA GPU when the dtype and head
  size allow it, else xla (native GQA, no mask constant). An explicit choice is kept as is;
  `problems` reports one that cannot run.
  """
  if cfg.attention != "auto":
    return cfg.attention
  platform = platform or jax.default_backend()
  if platform == "cpu":
    return "einsum"
  if platform in ("gpu", "cuda") and not cudnn_problems(cfg):
    return "cudnn"
  return "xla"


def problems(cfg: ModelConfig, platform: str) -> list[str]:
  """Reasons the configured attention cannot run on `platform`, each naming the fix."""
  impl = resolve(cfg, platform)
  if impl == "xla" and platform == "cpu" and cfg.dtype == "float16":
    # jax refuses the float16 x float16 -> float32 dot it lowers to on CPU (trace time).
    return ["model.attention='xla' with model.dtype='float16': XLA:CPU has no float16 "
            "dot with float32 accumulation; set model.attention=auto (einsum) or "
            "model.dtype=bfloat16"]
  if impl != "cudnn":
    return []
  out = [] if platform in ("gpu", "cuda") else [
      f"model.attention='cudnn' needs an NVIDIA GPU, this host runs {platform}"]
  out += cudnn_problems(cfg)
  return [p + "; set model.attention=auto (or xla)" for p in out]


def same_segment(segment_ids: jax.Array) -> jax.Array:
  """bool [B, T, T]: query t and key s lie in the same packed document."""
  return segment_ids[:, :, None] == segment_ids[:, None, :]


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str,
                     segment_ids: jax.Array | None = None) -> jax.Array:
  """Causal self-attention of a full sequence, q [B,T,H,D], k/v [B,T,KV,D] -> [B,T,H,D]; with
  `segment_ids` [B, T], a query attends only to keys of its own document.

  Inputs and output carry `checkpoint_name`s (query_proj, key_proj, value_proj, context) so a
  named remat policy can keep them instead of recomputing the attention in the backward pass.
  """
  q, k, v = (checkpoint_name(a, n) for a, n in
             ((q, "query_proj"), (k, "key_proj"), (v, "value_proj")))
  same = None if segment_ids is None else same_segment(segment_ids)
  if impl == "einsum":
    t = q.shape[1]
    mask = np.tril(np.ones((t, t), dtype=bool))[None]
    out = attend(q, k, v, mask if same is None else mask & same)
  else:
    out = jax.nn.dot_product_attention(q, k, v, mask=None if same is None else same[:, None],
                                       is_causal=True, implementation=impl)
  return checkpoint_name(out, "context")
