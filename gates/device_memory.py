"""The memory-fit rule: does a step's need per device fit the device, and what to print if not.

The rule is data (gates/contracts/memory-fit-v1.yaml: the margin, the analytic model's error
bound, the device kinds and the sources of their capacities), typed here once by `parse` and
handed to the decisions, as the Chinchilla gate's contract is. `judge` compares one need with
one capacity; `refusal_line` words a refusal with the breakdown and the fix. The need comes from
XLA's compiled figures at run time (train/run/memory_check.py) and from gates/memory.py's
analytic model in the plan (train/cli/memory_plan.py). There is no bypass: a run that cannot
fit cannot run.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, Mapping

from core.errors import ConfigError, ContractError, GateRefusal

CONTRACT = "memory-fit-v1"  # the file stem: core.contracts.load(CONTRACT)
GB = 10**9
HOST = "host"


@dataclasses.dataclass(frozen=True)
class Device:
  """A device kind: its capacity in bytes (0 for `host`, measured when asked) and its source."""

  name: str
  capacity: int
  source: str
  platform: str  # the XLA backend a plan for it models (gpu, tpu, cpu)


@dataclasses.dataclass(frozen=True)
class MemoryContract:
  name: str
  version: str
  margin: Fraction
  tolerance: Fraction
  devices: tuple[Device, ...]

  def device(self, kind: str) -> Device:
    """The device kind named `kind` (case-insensitive); ConfigError naming the known ones."""
    for d in self.devices:
      if d.name == kind.lower():
        return d
    raise ConfigError(f"--device={kind!r} is not a known device kind; known: "
                      f"{', '.join(d.name for d in self.devices)} (or set "
                      f"--config.mesh.device_memory_gb=GB)")

  def usable(self, capacity: int) -> int:
    """Bytes a step may need of `capacity`: the margin is kept free."""
    return int(capacity * (1 - self.margin))


def _fraction(data: Mapping[str, Any], key: str) -> Fraction:
  try:
    value = Fraction(str(data.get(key)))
  except (ValueError, ZeroDivisionError):
    value = Fraction(-1)
  if not 0 <= value < 1:
    raise ContractError(f"contract {CONTRACT}: {key} must be a decimal string in [0, 1), got "
                        f"{data.get(key)!r}")
  return value


def parse(data: Mapping[str, Any]) -> MemoryContract:
  """The typed contract from its parsed YAML (core.contracts.load)."""
  devices = []
  for name, spec in (data.get("devices") or {}).items():
    gb = spec.get("memory_gb") if isinstance(spec, Mapping) else None
    if not isinstance(gb, (int, float)) or isinstance(gb, bool) or gb < 0 or (
        gb == 0 and name != HOST) or not spec.get("source") or spec.get("platform") not in (
        "gpu", "tpu", "cpu"):
      raise ContractError(f"contract {CONTRACT}: device {name!r} needs memory_gb > 0, a "
                          f"source and a platform (gpu, tpu or cpu)")
    devices.append(Device(str(name), int(gb * GB), str(spec["source"]), spec["platform"]))
  if not devices:
    raise ContractError(f"contract {CONTRACT}: `devices` must list the known device kinds")
  return MemoryContract(data["contract"], data["version"], _fraction(data, "margin"),
                        _fraction(data, "estimate_tolerance"), tuple(devices))


GiB = 2**30


def gb(n: float) -> str:
  """Bytes as GiB from 1 GiB up, else MiB (every memory figure pregate prints). Capacities
  are declared in spec-sheet GB, 10^9 bytes."""
  return f"{n / GiB:,.2f} GiB" if abs(n) >= GiB else f"{n / 2**20:,.1f} MiB"


@dataclasses.dataclass(frozen=True)
class Fit:
  """One need against one capacity under the contract's margin."""

  need: int  # bytes per device
  capacity: int
  usable: int
  what: str  # where the need comes from ("XLA's compiled step", "analytic estimate")
  capacity_source: str

  @property
  def fits(self) -> bool:
    return self.need <= self.usable

  @property
  def headroom(self) -> int:
    return self.usable - self.need

  def line(self) -> str:
    """'memory: 1.20 GB per device (XLA's compiled step) of 9.50 usable (10.00 GB, ...)'."""
    verdict = (f"fits, headroom {gb(self.headroom)}" if self.fits
               else f"does NOT fit, {gb(-self.headroom)} over")
    return (f"memory: {gb(self.need)} per device ({self.what}) of {gb(self.usable)} usable "
            f"({gb(self.capacity)} {self.capacity_source}, less the margin): {verdict}")


def judge(contract: MemoryContract, need: int, capacity: int, what: str,
          capacity_source: str) -> Fit:
  """Pure: the need against the usable part of the capacity."""
  if capacity <= 0:
    raise ConfigError(f"device capacity must be positive, got {capacity} ({capacity_source})")
  return Fit(int(need), int(capacity), contract.usable(capacity), what, capacity_source)


class MemoryRefusal(GateRefusal):
  """The step cannot fit its devices (exit 3); not bypassable."""


def refusal_line(contract: MemoryContract, fit: Fit, breakdown: str, fix: str) -> str:
  """The one line of a refusal: the need, the capacity, the breakdown and the fix."""
  return (f"memory gate refused the run: the step needs {gb(fit.need)} per device "
          f"({fit.what}) but {gb(fit.usable)} is usable ({gb(fit.capacity)} "
          f"{fit.capacity_source}, less the {float(contract.margin):.0%} margin); estimate: "
          f"{breakdown}; fix: {fix}; no flag bypasses this rule "
          f"[contract {contract.name} v{contract.version}]")
