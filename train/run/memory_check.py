"""The run's own memory verdict, after the ahead-of-time compile and before step 1.

XLA has assigned every buffer of the compiled step by then, so its figure (arguments + outputs
- donated aliases + temporaries, per device program) is the step's need, not an estimate. It is
compared with the device's capacity: `mesh.device_memory_gb` when set, else the accelerator's
`bytes_limit`, else (CPU) the host's available memory shared by its local devices. Over the
usable part (contract memory-fit) the run is refused, exit 3, in one line with the analytic
breakdown and the cheapest fix (gates/memory.py, calibrated to this compiled figure), before
the run claims its workdir. No flag bypasses it. Under it, the start-up line shows both figures
and the headroom.
"""
from __future__ import annotations

from typing import Any

import jax

from core import contracts
from gates import config_schema, device_memory
from models.config import ModelConfig
from train.run.setup import RunSetup
from train.runtime import host_memory
from train.state import flops, sharding


def capacity(config: Any) -> tuple[int, str]:
  """Bytes per device the step may use, and where the figure comes from."""
  declared = float(config.mesh.device_memory_gb)
  if declared:
    return int(declared * device_memory.GB), "mesh.device_memory_gb"
  dev = jax.local_devices()[0]
  limit = (dev.memory_stats() or {}).get("bytes_limit")
  if limit:
    return int(limit), f"{dev.device_kind} bytes_limit"
  available = host_memory.available_bytes()
  if available is None:
    return 0, "unknown"
  n = jax.local_device_count()
  return available // n, f"host available memory / {n} local devices"


def compiled_need(rs: RunSetup) -> int:
  """The larger per-device figure of the run's compiled step variants."""
  steps = {id(s): s for s in (rs.compiled, rs.compiled_log)}.values()
  return max(flops.memory_bytes(s.memory_analysis()) for s in steps)


def _fix(config: Any, model_cfg: ModelConfig, shape: tuple[int, int, int], usable: int,
         need: int, teacher_cfg: ModelConfig | None) -> tuple[str, str]:
  """(the analytic breakdown of this config, the cheapest fix that fits): the analytic model
  is scaled to this compiled figure, so the fix is judged against what XLA will assign."""
  from gates import memory  # only a refusal needs the analytic model
  view = config_schema.view(config.to_dict())
  estimate = memory.estimate(view, model_cfg, shape, teacher_cfg)  # on this process's backend
  scale = need / max(estimate.total, 1)
  return estimate.line(), memory.fix_text(view, model_cfg, jax.device_count(), usable,
                                          teacher_cfg, scale=scale)


def check(config: Any, model_cfg: ModelConfig, rs: RunSetup) -> str:
  """The start-up line when the compiled step fits; MemoryRefusal (one line) when not."""
  contract = device_memory.parse(contracts.load(device_memory.CONTRACT))
  cap, source = capacity(config)
  need = compiled_need(rs)
  if cap <= 0:
    return f"memory: {device_memory.gb(need)} per device (XLA's compiled step); capacity unknown"
  fit = device_memory.judge(contract, need, cap, "XLA's compiled step", source)
  if fit.fits:
    return fit.line()
  shape = tuple(int(rs.mesh.shape[a]) for a in sharding.AXES)
  teacher_cfg = None if rs.teacher is None else rs.teacher.model_cfg
  breakdown, fix = _fix(config, model_cfg, shape, fit.usable, need, teacher_cfg)
  raise device_memory.MemoryRefusal(device_memory.refusal_line(contract, fit, breakdown, fix))
