"""Back a CPU run's large malloc'd buffers with transparent huge pages.

XLA:CPU allocates each step's temporaries with malloc. glibc serves blocks this large with
fresh mmaps and unmaps them on free, so every step page-faults its whole working set back in,
4 KiB at a time: on the default config ~40k faults and ~38% of each step (docs/benchmarks.md). With
glibc's hugetlb tunable those mappings are advised as huge pages (2 MiB faults, ~500x fewer).
Keeping freed memory in one never-trimmed arena did as well on that config but serialized
malloc across device threads (18% slower on the nanoGPT-shaped one); this costs neither.

glibc reads its tunables only at process start, so a training command re-executes itself once
with GLIBC_TUNABLES set, after the preflight checks (refusals stay fast). An environment that
already sets GLIBC_TUNABLES is left alone, as are hosts with an accelerator plugin (device
memory does not go through malloc) and non-glibc platforms. Needs the kernel's transparent huge
pages in `madvise` or `always` mode (the common default); with `never` it changes nothing.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys

TUNABLES = "glibc.malloc.hugetlb=1"
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


def describe() -> str:
  """For the start-up log: which malloc this process runs with."""
  tunables = os.environ.get("GLIBC_TUNABLES")
  if tunables == TUNABLES:
    return f"huge pages (GLIBC_TUNABLES={TUNABLES})"
  return "default" if tunables is None else f"GLIBC_TUNABLES={tunables!r} (set by the caller)"


def reexec_with_tunables() -> None:
  """Replace this process with the same command under TUNABLES (no-op once applied)."""
  if not wants_reexec():
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": TUNABLES})


def available_bytes() -> int | None:
  """The host memory a new allocation can get without swapping (MemAvailable); None where the
  kernel does not say (non-Linux)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    return None
  return None
