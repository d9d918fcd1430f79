"""Keep a CPU run's freed buffers inside the process.

XLA:CPU allocates each step's temporaries with malloc. glibc serves blocks this large with
fresh mmaps from per-thread arenas and unmaps them on free, so every step page-faults its whole
working set back in: on the default config that was 49k faults and ~40% of the step
(BUILD_NOTES.md). One arena that grows with brk and is never trimmed reuses the same pages.

glibc reads its tunables only at process start, so a training command re-executes itself once
with GLIBC_TUNABLES set, after the preflight checks (refusals stay fast). An environment that
already sets GLIBC_TUNABLES is left alone, as are hosts with an accelerator plugin (device
memory does not go through malloc) and non-glibc platforms.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys

TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
            "glibc.malloc.trim_threshold=1099511627776")
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "libtpu")


def _cpu_host() -> bool:
  """Will JAX's default backend be the CPU? Decided without starting a backend."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def wants_reexec() -> bool:
  return ("GLIBC_TUNABLES" not in os.environ and sys.platform.startswith("linux")
          and platform.libc_ver()[0] == "glibc" and _cpu_host())


def reexec_with_tunables() -> None:
  """Replace this process with the same command under TUNABLES (no-op once applied)."""
  if not wants_reexec():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": TUNABLES})
