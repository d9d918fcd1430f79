"""GPU runtime settings: XLA flags and the device memory fraction (the persistent compilation
cache, used on every platform, is train/runtime/compile_cache.py).

Applied only on GPU hosts, and only before JAX starts its backend: XLA reads `XLA_FLAGS` and
the client reads `XLA_PYTHON_CLIENT_MEM_FRACTION` once, at start-up. Whatever the environment
already sets wins, flag by flag. The values follow MaxText's GPU recipes (REFERENCES.md): the
latency-hiding scheduler overlaps collectives with compute, large combine thresholds merge the
per-parameter FSDP/data-parallel collectives into few big ones, pipelined collectives and
while-loop double buffering overlap them across scanned layers. `describe()` is the one line
the start-up log prints, so a run shows what it got.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping

COMBINE_BYTES = 1 << 30
XLA_GPU_FLAGS: dict[str, str] = {
    "xla_gpu_enable_latency_hiding_scheduler": "true",
    "xla_gpu_enable_while_loop_double_buffering": "true",
    "xla_gpu_all_reduce_combine_threshold_bytes": str(COMBINE_BYTES),
    "xla_gpu_all_gather_combine_threshold_bytes": str(COMBINE_BYTES),
    "xla_gpu_reduce_scatter_combine_threshold_bytes": str(COMBINE_BYTES),
    "xla_gpu_enable_pipelined_all_gather": "true",
    "xla_gpu_enable_pipelined_reduce_scatter": "true",
    "xla_gpu_enable_pipelined_all_reduce": "true",
}
MEM_FRACTION = "0.90"  # JAX's default preallocates 75% of device memory
_NVIDIA = ("/dev/nvidiactl", "/proc/driver/nvidia/version")


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
  gpu: bool
  env: dict[str, str]  # variables to set (only those the environment left unset)
  xla_flags_added: tuple[str, ...]
  xla_flags_kept: tuple[str, ...]  # our flags the environment already set its own way
  late: bool = False  # the backend had started before apply(): env settings had no effect


def is_gpu_host(environ: Mapping[str, str] = os.environ) -> bool:
  """Without starting JAX: JAX_PLATFORMS names a GPU, or (unset) the CUDA backend can start."""
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms:
    return any(p in platforms.lower() for p in ("cuda", "gpu"))
  return cuda_available()


def cuda_available() -> bool:
  """A CUDA plugin is installed and an NVIDIA driver is present (what JAX's GPU backend needs)."""
  plugin = any(importlib.util.find_spec(m) is not None
               for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
  return plugin and any(os.path.exists(p) for p in _NVIDIA)


def _flag_names(xla_flags: str) -> set[str]:
  return {f.lstrip("-").split("=", 1)[0] for f in xla_flags.split() if f.startswith("--")}


def plan(environ: Mapping[str, str] = os.environ, gpu: bool | None = None) -> RuntimeSettings:
  """What apply() would set, as a pure function of the environment (testable anywhere)."""
  gpu = is_gpu_host(environ) if gpu is None else gpu
  if not gpu:
    return RuntimeSettings(False, {}, (), ())
  env: dict[str, str] = {}
  existing = environ.get("XLA_FLAGS", "")
  have = _flag_names(existing)
  added = tuple(f"--{k}={v}" for k, v in XLA_GPU_FLAGS.items() if k not in have)
  kept = tuple(k for k in XLA_GPU_FLAGS if k in have)
  if added:
    env["XLA_FLAGS"] = " ".join(([existing] if existing else []) + list(added))
  if "XLA_PYTHON_CLIENT_MEM_FRACTION" not in environ:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = MEM_FRACTION
  return RuntimeSettings(True, env, added, kept)


def apply() -> RuntimeSettings:
  """Set the planned variables; call before anything starts JAX's backend (jax.devices(), the
  first array). A no-op on hosts without a GPU."""
  settings = plan()
  if not settings.gpu:
    return settings
  from jax._src import xla_bridge
  late = xla_bridge.backends_are_initialized()
  os.environ.update(settings.env)
  return dataclasses.replace(settings, late=late)


def describe(settings: RuntimeSettings) -> str:
  """One line for the start-up log."""
  if not settings.gpu:
    return "gpu runtime: not a GPU host, nothing set"
  parts = [f"{len(settings.xla_flags_added)} XLA flags added"
           + (f" ({len(settings.xla_flags_kept)} kept from XLA_FLAGS)"
              if settings.xla_flags_kept else "")]
  fraction = settings.env.get("XLA_PYTHON_CLIENT_MEM_FRACTION")
  parts.append(f"memory fraction {fraction}" if fraction else
               "memory fraction from the environment")
  late = "; TOO LATE: JAX had started, flags and memory fraction not applied" \
      if settings.late else ""
  return "gpu runtime: " + ", ".join(parts) + late
