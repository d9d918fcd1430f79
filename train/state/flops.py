"""Model FLOPs per token and the device peak that MFU is measured against.

GPU/TPU peaks come from a table per device kind (dense bf16 spec sheets); a CPU has no spec
sheet, so its peak is measured once per process with a large jitted matmul.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig

# Dense (non-sparse) peak FLOP/s per device, bf16 / fp32 where the sheet gives one.
_PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L4": {"bfloat16": 121e12, "float32": 30e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
}


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6N for the weights plus 12·L·d·T for attention scores and
  values (PaLM, Chowdhery et al. 2022, appendix B)."""
  return 6.0 * n_params + 12.0 * cfg.n_layers * cfg.d_model * seq_len


@functools.cache
def measured_matmul_peak(dtype: str = "float32", n: int = 2048, reps: int = 10) -> float:
  """Best FLOP/s of an n x n matmul on device 0 (bf16 inputs accumulate in fp32). The fastest
  repetition, not the median: a peak is what the host can do, and a busy neighbour (a data
  thread, a shared machine) only ever slows a repetition down (a median once read 50% low)."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype=dtype)
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2.0 * n ** 3 / min(times)


def device_peak(dtype: str = "float32") -> tuple[float, str]:
  """(peak FLOP/s per device, where the figure came from). CPU devices of one process share
  the host's cores, so each gets its share of the host's measured peak."""
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    return measured_matmul_peak(dtype) / jax.local_device_count(), "measured matmul"
  for kind, peaks in _PEAKS.items():
    if kind.lower() in dev.device_kind.lower():
      return peaks.get(dtype, peaks["bfloat16"]), f"spec sheet ({kind})"
  return measured_matmul_peak(dtype), f"measured matmul ({dev.device_kind})"
