"""The Chinchilla gate's contract as a typed value, checked once and handed to every decision.

The rule lives as data in gates/contracts/chinchilla-gate-v1.yaml: thresholds, R* of the D'
formula, zone and rule texts, the bypass flag, the version. gates/ does not read it: core.contracts
opens the file and checks the format every contract shares, `parse` here turns that mapping into
a frozen ChinchillaContract, and the decisions take it as an argument (gates.chinchilla.evaluate,
gates.adviser.advise, gates.repetition.report; gates.effective takes R*). Explicit injection
rather than a loader that gates import: a decision is then a pure function of its inputs (no
hidden file read, no cache to invalidate), a test judges under an edited rule by parsing an
edited mapping, and the Verdict carries the contract it was decided under, so its messages and
`recheck` need no second read.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, Mapping

from core.errors import ContractError

CONTRACT = "chinchilla-gate-v1"  # the file stem: core.contracts.load(CONTRACT)


@dataclasses.dataclass(frozen=True)
class ChinchillaContract:
  """The rule the gate decides by. Texts are (key, text) pairs so the value stays hashable."""

  name: str
  version: str
  hard_floor_ratio: int
  degeneration_below: int
  max_epochs: int
  r_star: Fraction
  bypass_flag: str
  zone_texts: tuple[tuple[str, str], ...]
  rule_texts: tuple[tuple[str, str], ...]

  def zone_text(self, zone: str) -> str:
    return dict(self.zone_texts).get(zone, "?: ?")

  def rule_text(self, rule: str) -> str:
    return dict(self.rule_texts).get(rule, "?")


def _threshold(data: Mapping[str, Any], key: str) -> int:
  """An integer threshold; ints only, because gates compare with exact integer arithmetic."""
  value = (data.get("thresholds") or {}).get(key)
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ContractError(f"contract {CONTRACT}: thresholds.{key} must be a positive integer, "
                        f"got {value!r}")
  return value


def _r_star(data: Mapping[str, Any]) -> Fraction:
  """R*_D, exact: a decimal string such as "15.4" reads as 154/10, not a binary float."""
  spec = data.get("effective_tokens")
  if not isinstance(spec, dict) or not isinstance(spec.get("constants"), dict):
    raise ContractError(f"contract {CONTRACT}: effective_tokens needs `constants`")
  value = spec["constants"].get("R_star")
  try:
    r_star = Fraction(str(value))
  except (ValueError, ZeroDivisionError):
    r_star = Fraction(0)
  if r_star <= 0:
    raise ContractError(f"contract {CONTRACT}: constant R_star={value!r} is not a positive "
                        f"number")
  return r_star


def parse(data: Mapping[str, Any]) -> ChinchillaContract:
  """The typed contract from its parsed YAML (core.contracts.load); ContractError names a bad
  field."""
  floor = _threshold(data, "hard_floor_ratio")
  degeneration = _threshold(data, "degeneration_below")
  max_epochs = _threshold(data, "max_epochs")
  if degeneration > floor:
    raise ContractError(f"contract {CONTRACT}: degeneration_below={degeneration} exceeds "
                        f"hard_floor_ratio={floor}")
  flag = (data.get("bypass") or {}).get("flag")
  if not isinstance(flag, str) or not flag:
    raise ContractError(f"contract {CONTRACT}: bypass.flag must name the bypass flag")
  zones = data.get("zones") or {}
  return ChinchillaContract(
      name=data["contract"], version=data["version"], hard_floor_ratio=floor,
      degeneration_below=degeneration, max_epochs=max_epochs,
      r_star=_r_star(data), bypass_flag=flag,
      zone_texts=tuple((zone, f"{spec.get('range', '?')}: {spec.get('meaning', '?')}")
                       for zone, spec in zones.items()),
      rule_texts=tuple((rule, str(text)) for rule, text in (data.get("rules") or {}).items()))
