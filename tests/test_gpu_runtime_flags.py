"""The GPU runtime's XLA flags exist in the pinned XLA: a child process starts with them set (flags
are read once, at backend start)."""
import subprocess
import sys

import pytest

import helpers
from train.runtime import gpu_runtime

pytestmark = pytest.mark.e2e


def test_flag_names_exist_in_the_pinned_xla():
  """XLA aborts at start-up on an unknown XLA_FLAGS entry, on any backend: start JAX on CPU
  with the GPU flags (a misspelled flag makes this fail)."""
  flags = gpu_runtime.plan(environ={}, gpu=True).env["XLA_FLAGS"]
  env = {**helpers.child_env(), "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
  code = "import jax; print(int(jax.numpy.ones(3).sum()))"
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "3", proc.stderr[-2000:]
  bad = {**env, "XLA_FLAGS": flags + " --xla_gpu_enable_latency_hiding_schedular=true"}
  proc = subprocess.run([sys.executable, "-c", code], env=bad, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode != 0  # the check above can fail
