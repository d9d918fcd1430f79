"""GPU runtime settings: applied only on GPU hosts, the environment wins flag by flag, every
flag name exists in the pinned XLA, and describe() is one line."""
import os

from train.runtime import gpu_runtime


def test_nothing_on_a_cpu_host():
  assert not gpu_runtime.is_gpu_host({"JAX_PLATFORMS": "cpu"})
  assert gpu_runtime.is_gpu_host({"JAX_PLATFORMS": "cuda"})
  assert not gpu_runtime.is_gpu_host({})  # this host: no CUDA plugin, no NVIDIA driver
  settings = gpu_runtime.plan(environ={"JAX_PLATFORMS": "cpu"})
  assert not settings.gpu and settings.env == {}
  assert gpu_runtime.describe(settings) == "gpu runtime: not a GPU host, nothing set"


def test_gpu_defaults():
  settings = gpu_runtime.plan(environ={}, gpu=True)
  flags = settings.env["XLA_FLAGS"].split()
  assert flags == [f"--{k}={v}" for k, v in gpu_runtime.XLA_GPU_FLAGS.items()]
  assert settings.env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
  line = gpu_runtime.describe(settings)
  assert "\n" not in line and "8 XLA flags added" in line and "memory fraction 0.90" in line


def test_environment_wins():
  environ = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/d",
             "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"}
  settings = gpu_runtime.plan(environ=environ, gpu=True)
  flags = settings.env["XLA_FLAGS"]
  assert flags.startswith(environ["XLA_FLAGS"] + " ")  # the user's flags first, unchanged
  assert "latency_hiding_scheduler=true" not in flags and flags.count("latency_hiding") == 1
  assert settings.xla_flags_kept == ("xla_gpu_enable_latency_hiding_scheduler",)
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in settings.env
  assert "1 kept" in gpu_runtime.describe(settings)


def test_apply_is_a_no_op_off_gpu(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  settings = gpu_runtime.apply()
  assert not settings.gpu
  assert "XLA_FLAGS" not in os.environ
