"""Next-token cross-entropy: full logits, or chunked so that [B, T, V] never exists at once.

`chunked_cross_entropy` scans over tiles of sequence positions, keeps only each token's
log-sum-exp, and recomputes a tile's logits in the backward pass (a custom VJP), so the logits
cost [B, chunk, V] float32 instead of [B, T, V] (18.5 GiB per copy at V = 152k and 32k tokens).
Its matmuls follow models/matmul.py: compute-dtype inputs both ways, float32 logits, float32
accumulation of the head's gradient.

`distill_kl` is distillation's KL(teacher ‖ student) at a temperature, over full logits of both.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from models.matmul import emit_dtype

_F32 = jnp.float32


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy of full logits, in float32."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(_F32), targets)
  return jnp.mean(losses)


def _tiles(x: jax.Array, chunk: int) -> jax.Array:
  """[B, T, ...] -> [tiles, B, chunk, ...], T zero-padded up to a multiple of chunk.

  Tiles run along the sequence, so every tile keeps the whole (sharded) batch dimension and
  a data-parallel step needs no collective to scan them.
  """
  b, t = x.shape[:2]
  n = -(-t // chunk)
  pad = [(0, 0), (0, n * chunk - t)] + [(0, 0)] * (x.ndim - 2)
  x = jnp.pad(x, pad).reshape(b, n, chunk, *x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _tile_logits(xt: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.einsum("bcd,dv->bcv", xt, w.astype(xt.dtype), preferred_element_type=_F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked_ce(x: jax.Array, w: jax.Array, targets: jax.Array, chunk: int) -> jax.Array:
  return _chunked_fwd(x, w, targets, chunk)[0]


def _chunked_fwd(x, w, targets, chunk):
  b, t, _ = x.shape

  def body(total, tile):
    xt, tt, valid = tile
    logits = _tile_logits(xt, w)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, tt[..., None], axis=-1)[..., 0]
    return total + jnp.sum(jnp.where(valid, lse - target, 0.0)), lse

  tiles = (_tiles(x, chunk), _tiles(targets, chunk), _tiles(jnp.ones((b, t), bool), chunk))
  total, lse = jax.lax.scan(body, jnp.zeros((), _F32), tiles)
  return total / (b * t), (x, w, targets, lse)


def _chunked_bwd(chunk, res, g):
  x, w, targets, lse = res
  b, t, d = x.shape
  wc, emit = w.astype(x.dtype), emit_dtype(x.dtype)
  scale = g / (b * t)

  def body(dw, tile):
    xt, tt, valid, lt = tile
    p = jnp.exp(_tile_logits(xt, w) - lt[..., None])
    dlogits = (p - jax.nn.one_hot(tt, w.shape[1], dtype=_F32)) * (valid * scale)[..., None]
    dlogits = dlogits.astype(x.dtype)
    dxt = jnp.einsum("bcv,dv->bcd", dlogits, wc, preferred_element_type=emit).astype(x.dtype)
    return dw + jnp.einsum("bcd,bcv->dv", xt, dlogits, preferred_element_type=_F32), dxt

  tiles = (_tiles(x, chunk), _tiles(targets, chunk), _tiles(jnp.ones((b, t), bool), chunk),
           lse)
  dw, dx = jax.lax.scan(body, jnp.zeros(w.shape, _F32), tiles)
  dx = jnp.moveaxis(dx, 0, 1).reshape(b, -1, d)[:, :t]
  return dx, dw.astype(w.dtype), None


_chunked_ce.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_cross_entropy(x: jax.Array, w: jax.Array, targets: jax.Array, chunk: int
                          ) -> jax.Array:
  """Mean cross-entropy of the logits x @ w against targets, `chunk` positions at a time.

  x [B, T, D] final hidden states (compute dtype), w [D, V] head kernel (parameter dtype),
  targets [B, T] int. Equal in value and gradients to
  cross_entropy(matmul.head_logits(x, w), targets) up to float rounding; a chunk that does
  not divide T is padded (padded positions weigh nothing).
  """
  return _chunked_ce(x, w, targets, min(chunk, x.shape[1]))


def distill_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
               ) -> jax.Array:
  """Mean over positions of KL(softmax(t / τ) ‖ softmax(s / τ)) · τ², in float32.

  The τ² keeps the gradient's scale independent of τ (Hinton et al. 2015): d/ds of this is
  τ (softmax(s / τ) - softmax(t / τ)) / positions, which moves the student's logits toward the
  teacher's. The teacher's logits are the caller's to stop gradients through.
  """
  t = teacher_logits.astype(_F32) / temperature
  log_ps = jax.nn.log_softmax(student_logits.astype(_F32) / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(t, axis=-1)
  kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
  return jnp.mean(kl) * (temperature * temperature)
