"""The Chinchilla gate: refuse a run that plans too few tokens for its parameter count.

Hoffmann et al. (2022) found ~20 training tokens per parameter compute-optimal; a run far below
that spends its compute on a model its data cannot train. The decision is exact integer arithmetic
on N (parameters) and D (planned tokens); thresholds, zone texts, the bypass flag and the version
all come from gates/contracts/chinchilla-gate-v1.yaml, so the rule has one source of truth.

`passed` means the rule held (D >= floor * N). `bypassed` means the rule did not hold and the run
proceeds anyway because the operator set the bypass; a run that passes is never `bypassed`, even
with the flag set. A run proceeds iff `passed or bypassed`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from core.errors import ConfigError, GateRefusal
from gates import contract_store as contracts

CONTRACT = "chinchilla-gate-v1"
DEGENERATION = "DEGENERATION"
PLATEAU = "PLATEAU"
COMPUTE_OPTIMAL = "COMPUTE_OPTIMAL"
ZONES = (DEGENERATION, PLATEAU, COMPUTE_OPTIMAL)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def planned_tokens(train_steps: int, global_batch: int, seq_len: int) -> int:
  """D for the whole run (global_batch already includes gradient accumulation)."""
  for name, value in (("train_steps", train_steps), ("batch.global_batch", global_batch),
                      ("batch.seq_len", seq_len)):
    if not _is_int(value) or value <= 0:
      raise ConfigError(f"{name} must be a positive integer, got {value!r}")
  return train_steps * global_batch * seq_len


def ratio_text(tokens: int, n_params: int) -> str:
  """D/N to 2 decimals, truncated (not rounded) so a refused 19.999 never prints as 20.00."""
  hundredths = tokens * 100 // n_params
  return f"{hundredths // 100}.{hundredths % 100:02d}"


@dataclasses.dataclass(frozen=True)
class Verdict:
  """What the gate decided and every number needed to explain or fix it."""

  n_params: int
  n_non_embedding: int
  tokens: int
  ratio: float
  zone: str
  passed: bool
  bypassed: bool
  contract_version: str
  tokens_needed: int
  steps_needed: int
  tokens_per_step: int
  floor_ratio: int

  @property
  def proceeds(self) -> bool:
    return self.passed or self.bypassed

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready record (the bypass is recorded here, e.g. in a run's metadata)."""
    return {**dataclasses.asdict(self), "proceeds": self.proceeds,
            "contract": contracts.get_contract(CONTRACT)["contract"]}

  def message(self) -> str:
    """One line: the pass line, the refusal line, or (bypassed) the warning line."""
    if not self.passed:
      return warning_line(self) if self.bypassed else _refusal_line(self)
    return (f"chinchilla gate passed: {self.zone} zone, D/N = "
            f"{ratio_text(self.tokens, self.n_params)} >= {self.floor_ratio} "
            f"with {_sizes(self)} {_tag(self)}")


def _zone_text(zone: str) -> str:
  spec = contracts.get_contract(CONTRACT).get("zones", {}).get(zone, {})
  return f"{spec.get('range', '?')}: {spec.get('meaning', '?')}"


def _bypass_flag() -> str:
  return contracts.get_contract(CONTRACT)["bypass"]["flag"]


def _sizes(v: Verdict) -> str:
  return (f"N = {v.n_params:,} parameters ({v.n_non_embedding:,} non-embedding), "
          f"D = {v.tokens:,} tokens")


def _tag(v: Verdict) -> str:
  return f"[contract {contracts.get_contract(CONTRACT)['contract']} v{v.contract_version}]"


def _fix(v: Verdict) -> str:
  return (f"reaching {v.floor_ratio}*N = {v.tokens_needed:,} tokens needs "
          f"train_steps >= {v.steps_needed:,} at the configured global_batch x seq_len = "
          f"{v.tokens_per_step:,} tokens/step")


def _refusal_line(v: Verdict) -> str:
  return (f"chinchilla gate refused the run: {v.zone} zone ({_zone_text(v.zone)}); D/N = "
          f"{ratio_text(v.tokens, v.n_params)} < {v.floor_ratio} with {_sizes(v)}; {_fix(v)} "
          f"(or shrink the model); pass {_bypass_flag()} to run anyway {_tag(v)}")


def warning_line(verdict: Verdict) -> str:
  """The line to print when an under-provisioned run proceeds because of the bypass."""
  if verdict.passed:
    raise ValueError("warning_line is for a verdict that did not pass the gate")
  return (f"WARNING: chinchilla gate bypassed by {_bypass_flag()}: {verdict.zone} zone "
          f"({_zone_text(verdict.zone)}); D/N = {ratio_text(verdict.tokens, verdict.n_params)} "
          f"< {verdict.floor_ratio} with {_sizes(verdict)}; {_fix(verdict)} {_tag(verdict)}")


def evaluate(n_params: int, n_non_embedding: int, tokens: int, tokens_per_step: int,
             bypass: bool = False) -> Verdict:
  """Judge a planned run; pure apart from reading the (cached) contract."""
  if not _is_int(n_params) or n_params <= 0:
    raise ValueError(f"n_params must be a positive integer, got {n_params!r}")
  if not _is_int(n_non_embedding) or not 0 <= n_non_embedding <= n_params:
    raise ValueError(f"n_non_embedding must be an integer in [0, n_params], "
                     f"got {n_non_embedding!r}")
  if not _is_int(tokens) or tokens < 0:
    raise ValueError(f"tokens must be a non-negative integer, got {tokens!r}")
  if not _is_int(tokens_per_step) or tokens_per_step <= 0:
    raise ValueError(f"tokens_per_step must be a positive integer, got {tokens_per_step!r}")
  floor = contracts.threshold(CONTRACT, "hard_floor_ratio")
  degeneration = contracts.threshold(CONTRACT, "degeneration_below")
  if degeneration > floor:
    raise contracts.ContractError(f"contract {CONTRACT}: degeneration_below={degeneration} "
                                  f"exceeds hard_floor_ratio={floor}")
  if tokens < degeneration * n_params:
    zone = DEGENERATION
  elif tokens < floor * n_params:
    zone = PLATEAU
  else:
    zone = COMPUTE_OPTIMAL
  passed = tokens >= floor * n_params
  tokens_needed = floor * n_params
  return Verdict(
      n_params=n_params, n_non_embedding=n_non_embedding, tokens=tokens,
      ratio=tokens / n_params, zone=zone, passed=passed, bypassed=bool(bypass) and not passed,
      contract_version=contracts.version(CONTRACT), tokens_needed=tokens_needed,
      steps_needed=-(-tokens_needed // tokens_per_step), tokens_per_step=tokens_per_step,
      floor_ratio=floor)


class ChinchillaGateError(GateRefusal):
  """The run plans too few tokens for its size; exit 3, message is the one-line refusal."""

  def __init__(self, verdict: Verdict):
    super().__init__(verdict.message())
    self.verdict = verdict


def enforce(verdict: Verdict) -> Verdict:
  """Raise ChinchillaGateError unless the verdict lets the run proceed; returns the verdict."""
  if not verdict.proceeds:
    raise ChinchillaGateError(verdict)
  return verdict
