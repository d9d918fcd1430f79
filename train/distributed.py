"""Multi-host start-up with JAX's own runtime (`jax.distributed`), before any backend use.

Explicit flags win; otherwise a cluster environment JAX knows how to read (SLURM, Open MPI,
Kubernetes/GKE, Cloud TPU) is auto-detected; a plain single-process run initializes nothing.
"""
from __future__ import annotations

import os

import jax
from absl import logging

from gates.errors import ConfigError

_CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
                "TPU_WORKER_HOSTNAMES")


def _in_cluster() -> bool:
  if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
    return False  # An interactive one-task allocation is a single process.
  return any(k in os.environ for k in _CLUSTER_ENV)


def initialize(coordinator_address: str, num_processes: int, process_id: int) -> bool:
  """Join the job's processes; returns True when running multi-process."""
  explicit = (coordinator_address, num_processes > 1, process_id >= 0)
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
