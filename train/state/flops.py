"""Model FLOPs per token, the device peak MFU is measured against, and what XLA itself reports.

MFU uses the model's FLOPs (what the architecture needs, PaLM appendix B convention with causal
attention); HFU uses XLA's cost analysis of the compiled step (what the program executes,
recomputation included). GPU/TPU peaks come from a table per device kind (dense spec sheets);
a CPU has no spec sheet, so its peak is measured once per process with a large jitted matmul.
"""
from __future__ import annotations

import collections
import functools
import re
import time
from typing import Any

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig

# Dense (non-sparse) peak FLOP/s per device. float32 on NVIDIA GPUs is the TF32 tensor-core
# rate: XLA's default precision runs float32 matmuls as TF32 there, so MFU against the FP32
# (CUDA-core) rate could exceed 1. TPUs run float32 matmuls as bf16 passes by default.
_PEAKS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
}


def flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6 x (matmul parameters) + causal attention.

  Matmul parameters are the n_params total less the embedding tables plus the LM head's matmul
  (V x d, tied or not): the input embedding is a gather, not a matmul. Attention scores and
  values cost 12·L·(H·hd)·T per token over a full T x T square; causal attention computes half
  of it, 6·L·(H·hd)·T (MaxText's convention since its PR #1988).
  """
  vd = cfg.vocab_size * cfg.d_model
  embedding = vd if cfg.tie_embeddings else 2 * vd
  attention = 6.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
  return 6.0 * (n_params - embedding + vd) + attention


def forward_flops_per_token(cfg: ModelConfig, n_params: int, seq_len: int) -> float:
  """Forward-only FLOPs per token (a frozen teacher's): a third of `flops_per_token`, i.e.
  2 x (matmul parameters) + causal attention's forward, 2·L·(H·hd)·T."""
  return flops_per_token(cfg, n_params, seq_len) / 3.0


@functools.cache
def measured_matmul_peak(dtype: str = "float32", n: int = 1024, reps: int = 10) -> float:
  """Best FLOP/s of an n x n matmul on device 0 (bf16 inputs accumulate in fp32). The fastest
  repetition, not the median: a peak is what the host can do, and a busy neighbour (a data
  thread, a shared machine) only ever slows a repetition down (a median once read 50% low).
  n = 1024 reads within 3% of n = 2048 on a 2-core host in a sixth of the start-up time."""
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
      peak = peaks.get(dtype, peaks["bfloat16"])
      if dtype == "float32" and dev.platform == "gpu":
        return peak, f"spec sheet ({kind}, TF32: XLA's default float32 matmul on GPU)"
      return peak, f"spec sheet ({kind})"
  return measured_matmul_peak(dtype), f"measured matmul ({dev.device_kind})"


def compiled_stats(compiled: Any) -> dict[str, float]:
  """XLA's own figures for a compiled step, per device program: FLOPs (for HFU) and memory.

  `memory_bytes` = arguments + outputs - donated aliases + temporaries: XLA:CPU's
  `peak_memory_in_bytes` is not a true peak (STACK_NOTES §9). XLA's cost analysis counts a
  while loop's body once (scanned layers, the chunked loss: a 4-layer scanned step read 0.79
  GFLOP against 2.79 unrolled) and nothing inside custom calls (cuDNN attention): for HFU of
  such steps count an unrolled twin (scripts/gpu_bench_items.py does).
  """
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  mem = compiled.memory_analysis()
  out = {"xla_flops": float(cost.get("flops", 0.0))}
  if mem is not None:
    out.update(temp_bytes=mem.temp_size_in_bytes, memory_bytes=memory_bytes(mem))
  return out


def memory_bytes(mem: Any) -> int:
  """A compiled program's bytes per device from its memory_analysis(): arguments + outputs -
  donated aliases + temporaries (the memory-fit contract's `need`)."""
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
             + mem.temp_size_in_bytes)


def device_peak_memory() -> int | None:
  """Peak bytes in use on local device 0 since start (GPU/TPU allocators); None on CPU."""
  stats = jax.local_devices()[0].memory_stats()
  return None if not stats else stats.get("peak_bytes_in_use")


def dot_signatures(closed_jaxpr: Any) -> collections.Counter:
  """Counter of (lhs dtype, rhs dtype, output dtype, has batch dims) over every dot_general in
  a jaxpr, nested ones (jit, scan, remat, custom VJP) included. Dense projections and the LM
  head have no batch dims; attention's score and value products do."""
  out: collections.Counter = collections.Counter()

  def walk(jaxpr: Any) -> None:
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        (_, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
        out[tuple(str(v.aval.dtype) for v in eqn.invars) + (str(eqn.outvars[0].aval.dtype),
                                                             bool(lhs_batch))] += 1
      for sub in jex.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(closed_jaxpr.jaxpr)
  return out


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\(?([a-z]+[0-9]*)\[")
_GEMM = re.compile(r"\s(dot|custom-call)\((.*?)\)(?:,|$)")


def hlo_gemm_counts(hlo_text: str) -> dict[str, int]:
  """GEMMs in optimized HLO text (dots, also inside fusions, and cuBLAS custom calls), those
  with a float32 operand, and cuDNN fused-attention calls (forward and backward)."""
  dtypes = {m.group(1): m.group(2) for m in map(_INSTR.match, hlo_text.splitlines()) if m}
  gemm = gemm_f32 = attention = 0
  for line in hlo_text.splitlines():
    if "custom_call_target=\"__cudnn$fmha" in line:
      attention += 1
      continue
    m = _GEMM.search(line)
    if not m or (m.group(1) == "custom-call" and "__cublas$" not in line):
      continue
    operands = re.findall(r"(?:([a-z]+[0-9]*)\[[^\]]*\]\S*\s+)?%([\w.\-]+)", m.group(2))[:2]
    kinds = [dt or dtypes.get(name, "") for dt, name in operands]
    gemm += 1
    gemm_f32 += "f32" in kinds
  return {"gemm": gemm, "gemm_f32": gemm_f32, "fused_attention": attention}
