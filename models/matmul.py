"""Matmuls whose backward pass stays in the compute dtype, in each platform's fastest form.

Left to autodiff, `dot(bf16, bf16, preferred_element_type=float32)` makes the backward matmuls
float32 x bf16 (the cotangent is float32), which XLA:GPU runs as float32/TF32 GEMMs. Here the
forward and both backward matmuls of a bf16 model take bf16 x bf16 inputs:

- on GPU/TPU they also write the compute dtype (the GEMM accumulates in float32 internally);
- on XLA:CPU they write float32 and are rounded after: XLA:CPU upcasts a bf16-output dot to
  float32 x float32 (plus converts), while bf16 inputs with a float32 output run its native
  bf16 kernels (~2x the float32 rate on AVX-512 BF16, STACK_NOTES §10).

Weight gradients come out in the parameter dtype, accumulated in float32. Float32 compute is a
plain matmul, unchanged.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_F32 = jnp.dtype(jnp.float32)


def emit_dtype(dtype: jnp.dtype, platform: str | None = None) -> jnp.dtype:
  """The dtype a matmul computing in `dtype` should write on `platform` before rounding."""
  platform = platform or jax.default_backend()
  return _F32 if platform == "cpu" else jnp.dtype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul(x: jax.Array, w: jax.Array, out: jnp.dtype, emit: jnp.dtype) -> jax.Array:
  return jnp.einsum("...d,df->...f", x, w.astype(x.dtype),
                    preferred_element_type=jnp.promote_types(emit, out)).astype(out)


def _matmul_fwd(x, w, out, emit):
  return _matmul(x, w, out, emit), (x, w)


def _matmul_bwd(out, emit, res, g):
  x, w = res
  g = g.astype(x.dtype)
  dx = jnp.einsum("...f,df->...d", g, w.astype(x.dtype), preferred_element_type=emit)
  dw = jnp.einsum("...d,...f->df", x, g, preferred_element_type=_F32)
  return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense(x: jax.Array, w: jax.Array, dtype: jnp.dtype) -> jax.Array:
  """x @ w computed and returned in `dtype` (w in its parameter dtype, cast here)."""
  dtype = jnp.dtype(dtype)
  if dtype == _F32:
    return jnp.dot(x.astype(dtype), w.astype(dtype), preferred_element_type=dtype)
  return _matmul(x.astype(dtype), w, dtype, emit_dtype(dtype))


def head_logits(x: jax.Array, w: jax.Array) -> jax.Array:
  """Float32 logits [..., V] of x [..., D] (compute dtype) by the head kernel w [D, V]."""
  if x.dtype == _F32:
    return jnp.dot(x, w.astype(x.dtype), preferred_element_type=_F32)
  return _matmul(x, w, _F32, emit_dtype(x.dtype))
