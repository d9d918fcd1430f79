"""`pregate-plan --device=KIND [--devices=N]`: will the step fit, before anything compiles.

Prints the analytic breakdown of one training step per device (gates/memory.py: parameters,
gradients, optimizer moments, activations, logits and loss, the eval micro-batch, a teacher) on
the config's mesh over N devices of a named kind (gates/contracts/memory-fit-v1.yaml holds the
capacities and their sources; `host` is this machine's available memory), and a verdict. When it
does not fit, the cheapest fix that does, as --config overrides (a remat policy, a larger
grad_accum with the same global batch, a larger fsdp axis), or the arithmetic of why nothing
does. The run itself checks XLA's compiled figure before step 1 (train/run/memory_check.py).
"""
from __future__ import annotations

from typing import Any

from absl import flags
from ml_collections import ConfigDict

from core import contracts
from core.errors import ConfigError
from gates import config_schema, device_memory
from models.config import ModelConfig

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("device", None, "a device kind (h100, h200, a100-40gb, a100-80gb, l4, "
                      "rtx4090, host): print the step's memory per device and whether it fits")
  flags.DEFINE_integer("devices", 1, "with --device: how many such devices the run gets")


def wanted(flag_values: Any) -> bool:
  return flag_values.device is not None


def _capacity(device: device_memory.Device) -> tuple[int, str]:
  if device.name != device_memory.HOST:
    return device.capacity, f"{device.name}: {device.source}"
  from train.runtime import host_memory
  available = host_memory.available_bytes()
  if not available:
    raise ConfigError("--device=host: this system does not report its available memory; name "
                      "a device kind or set --config.mesh.device_memory_gb")
  return available, f"host: {device.source}"


def lines(config: ConfigDict, kind: str, n_devices: int,
          teacher_model: dict[str, Any] | None = None) -> tuple[list[str], bool]:
  """The breakdown table, the verdict line and (when it does not fit) the fix; -> (lines, fits)."""
  from gates import memory  # the analytic model: only a --device plan needs it
  contract = device_memory.parse(contracts.load(device_memory.CONTRACT))
  device = contract.device(kind)
  cap, source = _capacity(device)
  view = config_schema.view(config.to_dict())
  model_cfg = ModelConfig.from_dict(dict(config.model))
  teacher_cfg = None if teacher_model is None else ModelConfig.from_dict(dict(teacher_model))
  if n_devices < 1:
    raise ConfigError(f"--devices must be >= 1, got {n_devices}")
  shape = memory.resolve_mesh(view, n_devices)
  estimate = memory.estimate(view, model_cfg, shape, teacher_cfg, platform=device.platform)
  out = [f"memory per device on {n_devices} x {kind} (mesh data={shape[0]} x fsdp={shape[1]} x "
         f"tensor={shape[2]}), analytic, nothing compiled:"]
  for name, size, how in estimate.rows():
    if size:
      out.append(f"  {name:<15}{size:>18,} B {device_memory.gb(size):>12}  {how}")
  fit = device_memory.judge(contract, estimate.total, cap, "analytic estimate", source)
  out.append(f"  {'peak':<15}{estimate.total:>18,} B {device_memory.gb(estimate.total):>12}  "
             f"per device, at the {estimate.phase} (eval and a save are separate peaks; "
             f"host_save is host memory)")
  out.append(fit.line())
  if fit.fits:
    return out, True
  out.append("fix: " + memory.fix_text(view, model_cfg, n_devices, fit.usable, teacher_cfg,
                                         platform=device.platform))
  return out, False
