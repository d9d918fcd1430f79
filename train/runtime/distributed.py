"""Start-up before any backend use: CPU devices per host, and multi-host with JAX's own
runtime (`jax.distributed`).

Explicit flags win; otherwise a cluster environment JAX knows how to read (SLURM, Open MPI,
Kubernetes/GKE, Cloud TPU) is auto-detected; a plain single-process run initializes nothing.

On a CPU host one XLA device runs one op at a time and keeps ~1.1 of 2 cores busy on a small
model; splitting the cores into devices and the batch over them (the same data-parallel mesh a
GPU run uses) made the nanoGPT-shaped step 1.5x faster on 2 cores (docs/benchmarks.md).
"""
from __future__ import annotations

import os

import jax
from absl import logging
from ml_collections import ConfigDict

from core.errors import ConfigError
from models.config import ModelConfig

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
                "TPU_WORKER_HOSTNAMES")


def _in_cluster() -> bool:
  if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
    return False  # An interactive one-task allocation is a single process.
  return any(k in os.environ for k in _CLUSTER_ENV)


def _explicit(coordinator_address: str, num_processes: int, process_id: int
              ) -> tuple[bool, bool, bool]:
  """Which of the multi-process flags were given."""
  return bool(coordinator_address), num_processes > 1, process_id >= 0


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> bool:
  """Join the job's processes; returns True when running multi-process."""
  explicit = _explicit(coordinator_address, num_processes, process_id)
  if any(explicit):
    if not all(explicit):
      raise ConfigError("multi-process runs need all of --coordinator_address, "
                        "--num_processes (> 1) and --process_id (0-based)")
    if process_id >= num_processes:
      raise ConfigError(f"--process_id={process_id} must be < --num_processes={num_processes}")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _in_cluster():
    jax.distributed.initialize()
  else:
    return False
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # Log lines come from process 0 only.
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return jax.process_count() > 1


def wants_multi_process(coordinator_address: str, num_processes: int, process_id: int) -> bool:
  """Whether `initialize` will join a multi-process job (known before jax starts)."""
  return any(_explicit(coordinator_address, num_processes, process_id)) or _in_cluster()


def cpu_device_count(config: ConfigDict, model_cfg: ModelConfig, cores: int) -> int:
  """mesh.cpu_devices when set; else the most devices, up to one per core, that the mesh and
  the train and eval batches can be split over (1 always can)."""
  from train.state import sharding  # Imports flax/optax: only once a run starts.
  if config.mesh.cpu_devices > 0:
    return int(config.mesh.cpu_devices)
  for n in range(max(cores, 1), 1, -1):
    try:
      sharding.run_mesh_shape(config, model_cfg, n)
    except ConfigError:
      continue
    return n
  return 1


def split_cpu_cores(config: ConfigDict, model_cfg: ModelConfig, multi_process: bool) -> None:
  """Give the CPU backend its device count before it starts. An explicit device count in the
  environment (XLA_FLAGS' xla_force_host_platform_device_count, JAX_NUM_CPU_DEVICES) wins;
  multi-process runs keep one device per process unless mesh.cpu_devices asks otherwise.
  GPU/TPU runs are unaffected (the setting only shapes the CPU client)."""
  if ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
      or "JAX_NUM_CPU_DEVICES" in os.environ):
    return
  if multi_process and config.mesh.cpu_devices <= 0:
    return
  jax.config.update("jax_num_cpu_devices",
                    cpu_device_count(config, model_cfg, len(os.sched_getaffinity(0))))
