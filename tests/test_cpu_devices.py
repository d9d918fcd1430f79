"""A CPU host is split into several XLA devices (data parallel over its cores): how many, and
that an explicit choice in the environment or the config wins. The split must happen before
JAX starts its backend, so the start-up checks run in fresh processes."""
import os

import pytest

import helpers
from configs import base
from models.config import ModelConfig
from train.runtime import distributed, host_memory

pytestmark = pytest.mark.e2e


def _config(**over):
  c = base.get_config()
  for key, value in over.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def _model(**over):
  return ModelConfig(**{**dict(vocab_size=65, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                               d_ff=64, max_seq_len=32), **over})


@pytest.mark.parametrize("over, cores, want", [
    ({"batch.global_batch": 12}, 2, 2),
    ({"batch.global_batch": 12}, 8, 6),  # the most devices <= cores that divide the batch
    ({"batch.global_batch": 7}, 4, 1),
    ({"batch.global_batch": 12, "batch.grad_accum": 3}, 8, 4),  # microbatch 4
    ({"batch.global_batch": 12, "eval.batch_size": 9}, 8, 3),  # eval batches split too
    ({"batch.global_batch": 16, "mesh.tensor": 2}, 8, 8),  # data -1 fills the rest
    ({"batch.global_batch": 16, "mesh.tensor": 8}, 4, 1),  # n_heads=4 cannot split 8 ways
    ({"batch.global_batch": 16, "mesh.data": 1}, 8, 1),  # a fixed mesh: its own size
    ({"batch.global_batch": 12, "mesh.cpu_devices": 3}, 2, 3),  # explicit wins over cores
    ({"batch.global_batch": 12}, 1, 1),
])
def test_cpu_device_count(over, cores, want):
  assert distributed.cpu_device_count(_config(**over), _model(), cores) == want


def _devices(mode: str, cpu_devices: int = 0, **env_over: str) -> int:
  return helpers.python_json("cpu_devices.py", mode, str(cpu_devices),
                             env={"JAX_NUM_CPU_DEVICES": None, "XLA_FLAGS": None, **env_over})


def test_default_splits_the_cores():
  want = distributed.cpu_device_count(_config(**{"batch.global_batch": 12}), _model(),
                                      len(os.sched_getaffinity(0)))
  assert _devices("single") == want


def test_explicit_choices_win():
  assert _devices("single", cpu_devices=3) == 3
  assert _devices("single", XLA_FLAGS="--xla_force_host_platform_device_count=5") == 5
  assert _devices("single", cpu_devices=3,
                  XLA_FLAGS="--xla_force_host_platform_device_count=5") == 5


def test_multi_process_keeps_one_device_per_process():
  assert _devices("multi") == 1
  assert _devices("multi", cpu_devices=2) == 2


def test_training_run_uses_the_split_and_huge_pages(prepared_data, tmp_path):
  """`train.main` itself applies both before JAX starts (the start-up log says so)."""
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, {"train_steps": 10}),
                         "--force_under_provisioned", workdir=tmp_path / "run")
  assert res.rc == 0, res.stderr[-3000:]
  config = _config(**{"batch.global_batch": helpers.TINY["batch.global_batch"]})
  n = distributed.cpu_device_count(config, _model(), len(os.sched_getaffinity(0)))
  assert f"mesh: data={n} x fsdp=1 x tensor=1 ({n} devices)" in res.stderr
  if host_memory.wants_reexec():
    assert "malloc: huge pages" in res.stderr
