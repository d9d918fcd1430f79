"""The platform a run will use, known before JAX starts, and the execution settings it cannot run.

Preflight (train/run/preflight.py) refuses such a setting in one line that names the fix, before
the data is prepared or anything compiles; left to the compile, `--config.model.attention=cudnn`
on a CPU host prepared the data and then died with a traceback. Tried on XLA:CPU (jax 0.10.2),
what cannot run there:

- `model.attention=cudnn` in any dtype ("cuDNN is not detected"); on a GPU it also needs
  bfloat16/float16 compute and a head size cuDNN supports (models/attention.py);
- `model.attention=xla` with `model.dtype=float16` (jax: no F16_F16_F32 dot on CPU);
- `JAX_PLATFORMS` naming a backend this host cannot start (its backend fails at first use).

What runs on CPU: auto/einsum/xla attention in float32 and bfloat16, einsum in float16, any
parameter dtype, every remat policy, scanned layers, the chunked loss, XLA's GPU flags in
XLA_FLAGS (ignored). A mesh that the devices cannot fill (mesh.*, mesh.cpu_devices) needs the
device count and is refused by the loop, still before the data (sharding.run_mesh_shape).
Not a platform rule: on a CPU without AVX-512, bfloat16 compute over float32 parameters failed
at run time for a 1-layer tied-head toy (XLA:CPU DotThunk, BF16 x BF16 = F32) while the
default experiment ran in bfloat16; that depends on shapes, so it is not refused here.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from core.errors import ConfigError
from models import attention
from models.config import ModelConfig
from train.runtime import gpu_runtime

_GPU = ("cuda", "gpu")


class PlatformConfigError(ConfigError):
  """An execution setting the run's platform cannot run (a ConfigError: exit 2)."""


def _requested(environ: Mapping[str, str]) -> list[str]:
  return [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]


def planned(environ: Mapping[str, str] = os.environ) -> str:
  """'cpu', 'gpu' or 'tpu': the backend JAX will run on, without starting it (the first of
  JAX_PLATFORMS, else a GPU where the CUDA backend can start, a TPU where libtpu is
  installed, else the CPU)."""
  requested = _requested(environ)
  if requested:
    return "gpu" if requested[0] in _GPU else requested[0]
  if gpu_runtime.cuda_available():
    return "gpu"
  return "tpu" if importlib.util.find_spec("libtpu") is not None else "cpu"


def environment_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
  """Backends JAX_PLATFORMS asks for that this host cannot start, each naming the fix."""
  missing = [p for p in _requested(environ)
             if (p in _GPU and not gpu_runtime.cuda_available())
             or (p == "tpu" and importlib.util.find_spec("libtpu") is None)]
  return [f"JAX_PLATFORMS={environ['JAX_PLATFORMS']} asks for {p}, which this host cannot "
          f"start (no {'CUDA plugin and NVIDIA driver' if p in _GPU else 'libtpu'}); unset "
          f"JAX_PLATFORMS or set JAX_PLATFORMS=cpu" for p in missing]


def check(model_cfg: ModelConfig, environ: Mapping[str, str] = os.environ) -> None:
  """Refuse, in one line, what the planned platform cannot run (nothing compiled or written)."""
  found = environment_problems(environ)
  if found:
    raise PlatformConfigError("; ".join(found))
  platform = planned(environ)
  found = attention.problems(model_cfg, platform)
  if found:
    raise PlatformConfigError(f"cannot run on this host ({platform}): " + "; ".join(found))
