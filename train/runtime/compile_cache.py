"""The persistent compilation cache every run uses, on every platform.

A run compiles its two train-step variants, the state's initialiser, the eval step and a score
of small programs; on the 2-core CPU that was 6-8 s of a 10-12 s start before the first step.
They are a function of the program, the compiler and the device, not of the run, so they are
cached per user and host (not per workdir): a second run of a configuration, in any workdir,
loads them instead (docs/benchmarks.md "Start-up"). JAX keys each entry on the program, the
compile options and the jaxlib version, so a hit runs the same binary: results are bitwise
those of a fresh compile. The directory also names this host's CPU (model and ISA flags),
because XLA:CPU compiles for the host's instruction set and a home directory can be shared
between machines.

Where: $JAX_COMPILATION_CACHE_DIR (JAX's own variable, left alone), else $PREGATE_XLA_CACHE
(`none` turns the cache off), else $XDG_CACHE_HOME/pregate/xla/<host> (default ~/.cache).
Every program is cached, however quick its compile. The directory is not size-capped: JAX's
least-recently-used eviction keeps access files that processes sharing the cache race on (a
`FileNotFoundError` warning on stderr), so a cache the environment names is left exactly as
configured, and the default grows by a few MB per configuration until deleted.
"""
from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Mapping

JAX_ENV = "JAX_COMPILATION_CACHE_DIR"
OURS_ENV = "PREGATE_XLA_CACHE"
OFF = "none"


def host_key(cpuinfo: str | None = None) -> str:
  """A short name for this host's CPU: machine, model and ISA flags (what XLA:CPU targets)."""
  if cpuinfo is None:
    try:
      with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        cpuinfo = f.read()
    except OSError:
      cpuinfo = ""
  fields = {}
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  text = "|".join([platform.machine(), fields.get("model name", platform.processor()),
                   " ".join(sorted(fields.get("flags", fields.get("Features", "")).split()))])
  return f"{platform.machine()}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def plan(environ: Mapping[str, str] = os.environ) -> str | None:
  """The cache directory a run would use (None: no cache), as a pure function of the
  environment."""
  chosen = environ.get(JAX_ENV) or environ.get(OURS_ENV)
  if chosen:
    return None if chosen.strip().lower() == OFF else chosen
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "pregate", "xla", host_key())


def apply() -> str | None:
  """Point JAX at the planned cache (created if missing) before the first compile; -> the
  directory, or None when there is none or it cannot be created (the run compiles as usual)."""
  path = plan()
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None
  import jax
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return path
