"""The ship verdict: may this checkpoint leave the building? GO, WARN or NO-GO, one row a check.

A ship contract (a YAML file beside the experiment, e.g. configs/ship_shakespeare_char.yaml,
read by core.contracts.read_yaml and typed by `parse`) states what the model must show: the
validation loss and bits per byte at most a target, task accuracies at least a target, and
the thresholds of the export, generation and install checks. `pregate-ship` (train/cli/ship.py)
measures the facts; the functions here turn each fact into a row, pure and in order:

1. the gate verdict (a bypassed gate warns, naming the rules it bypassed);
2. each target: strict (no `tolerance`): the bound must hold, else NO-GO; loose (with one):
   a miss within the tolerance warns, a larger one is NO-GO;
3. the fingerprint: the checkpoint restored through the validated path, or NO-GO;
4. the export round trip: Hugging Face logits within the tolerance at every position, the
   same token ids;
5. generation: no sample all one token, sampled distinct-2 at least a floor;
6. the install check: the export loads in a fresh interpreter that cannot import pregate.
A contract may leave the last two out (`generation: false`, `install: false`).

A row is PASS, WARN, FAIL or SKIP (not run, with why); any FAIL is NO-GO, else any WARN (a
skipped check warns: it certified nothing) is WARN, else GO.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from core.errors import EXIT_SHIP_NO_GO, EXIT_SHIP_WARN, ContractError

GO, WARN, NO_GO = "GO", "WARN", "NO-GO"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"  # row statuses, besides WARN
EXIT_CODES = {GO: 0, WARN: EXIT_SHIP_WARN, NO_GO: EXIT_SHIP_NO_GO}
LOSS_TARGETS = ("val_loss", "val_bpb")  # at most the bound
TASK_METRICS = ("acc", "acc_norm")  # at least the bound


@dataclasses.dataclass(frozen=True)
class Target:
  """A bound on one measured figure: `name` is val_loss, val_bpb or task:NAME:METRIC."""

  name: str
  bound: float
  at_least: bool  # accuracy: value >= bound; loss: value <= bound
  tolerance: float = 0.0  # 0: strict (a miss is NO-GO); > 0: a miss within it warns
  path: str = ""  # a task's JSONL file ('' = the run's own, by name)

  @property
  def task(self) -> str | None:
    return self.name.split(":")[1] if self.name.startswith("task:") else None


@dataclasses.dataclass(frozen=True)
class ShipContract:
  name: str
  version: str
  step: str | int = "latest"
  targets: tuple[Target, ...] = ()
  bypassed_gate: str = WARN  # what a bypassed gate is: WARN or NO-GO
  export_tolerance: float = 1e-4
  export_windows: int = 3
  prompts: int = 3
  new_tokens: int = 64
  min_distinct_2: float = 0.3
  generation: bool = True  # false: the contract leaves the generation row out
  install: bool = True


@dataclasses.dataclass(frozen=True)
class Row:
  check: str
  status: str
  detail: str

  def to_dict(self) -> dict[str, str]:
    return dataclasses.asdict(self)


def _number(where: str, value: Any, low: float = 0.0, integer: bool = False) -> Any:
  ok = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok or not math.isfinite(value) or value < low:
    kind = "an integer" if integer else "a number"
    raise ContractError(f"ship contract: {where} must be {kind} >= {low:g}, got {value!r}")
  return value


def _target(name: str, spec: Any, at_least: bool) -> Target:
  where = f"targets.{name}"
  key = "min" if at_least else "max"
  if not isinstance(spec, Mapping) or key not in spec:
    raise ContractError(f"ship contract: {where} must be a mapping with `{key}` (and an "
                        f"optional `tolerance`), got {spec!r}")
  unknown = set(spec) - {key, "tolerance", "metric", "path"}
  if unknown:
    raise ContractError(f"ship contract: {where} has unknown keys {sorted(unknown)}")
  path = spec.get("path", "")
  if not isinstance(path, str):
    raise ContractError(f"ship contract: {where}.path must be a string, got {path!r}")
  return Target(name, float(_number(f"{where}.{key}", spec[key], -math.inf)), at_least,
                float(_number(f"{where}.tolerance", spec.get("tolerance", 0.0))), path)


def parse(data: Mapping[str, Any]) -> ShipContract:
  """The typed contract from its parsed YAML; ContractError names a bad field."""
  name, version = data.get("contract"), data.get("version")
  if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
    raise ContractError("ship contract: `contract` (its name) and `version` (a quoted string) "
                        "are required")
  unknown = set(data) - {"contract", "version", "summary", "step", "gate", "targets", "export",
                         "generation", "install"}
  if unknown:
    raise ContractError(f"ship contract: unknown keys {sorted(unknown)}")
  raw = data.get("targets") or {}
  if not isinstance(raw, Mapping):
    raise ContractError("ship contract: `targets` must be a mapping")
  targets = [_target(k, raw[k], False) for k in LOSS_TARGETS if k in raw]
  tasks = raw.get("tasks") or {}
  if set(raw) - {*LOSS_TARGETS, "tasks"} or not isinstance(tasks, Mapping):
    raise ContractError(f"ship contract: targets may hold {list(LOSS_TARGETS)} and `tasks` "
                        f"(name -> metric, min, tolerance, path), got {sorted(raw)}")
  for task, spec in tasks.items():
    metric = spec.get("metric", "acc") if isinstance(spec, Mapping) else None
    if metric not in TASK_METRICS:
      raise ContractError(f"ship contract: targets.tasks.{task}.metric must be one of "
                          f"{TASK_METRICS}, got {metric!r}")
    targets.append(_target(f"task:{task}:{metric}", spec, True))
  gate = data.get("gate") or {}
  bypassed = {"warn": WARN, "no-go": NO_GO}.get(
      str(gate.get("bypassed", "warn")).lower()) if isinstance(gate, Mapping) else None
  if bypassed is None:
    raise ContractError(f"ship contract: gate.bypassed must be warn or no-go, got {gate!r}")
  export, gen = data.get("export") or {}, data.get("generation", {})
  generation = gen is not False  # `generation: false` leaves the row out, as `install: false`
  gen = gen or {}
  if not isinstance(export, Mapping) or not isinstance(gen, Mapping):
    raise ContractError("ship contract: `export` must be a mapping and `generation` a mapping "
                        "or false")
  install = data.get("install", True)
  if not isinstance(install, bool):
    raise ContractError(f"ship contract: install must be true or false, got {install!r}")
  step = data.get("step", "latest")
  if not (step in ("latest", "best") or (isinstance(step, int) and step >= 0)):
    raise ContractError(f"ship contract: step must be latest, best or a step, got {step!r}")
  return ShipContract(
      name=name, version=version, step=step, targets=tuple(targets), bypassed_gate=bypassed,
      export_tolerance=float(_number("export.tolerance", export.get("tolerance", 1e-4))),
      export_windows=_number("export.windows", export.get("windows", 3), 1, True),
      prompts=_number("generation.prompts", gen.get("prompts", 3), 1, True),
      new_tokens=_number("generation.new_tokens", gen.get("new_tokens", 64), 2, True),
      min_distinct_2=float(_number("generation.min_distinct_2",
                                   gen.get("min_distinct_2", 0.3))),
      generation=generation, install=install)


def gate_row(gate: Mapping[str, Any] | None, bypassed_gate: str = WARN) -> Row:
  """The Chinchilla verdict the checkpoint records: passed, bypassed (naming the rules) or
  unknown (a stamped or imported checkpoint records none: a warning)."""
  if not isinstance(gate, Mapping) or "passed" not in gate:
    return Row("gate", WARN, "no gate verdict recorded (a stamped or imported checkpoint)")
  zone = gate.get("zone", "?")
  if gate.get("passed"):
    return Row("gate", PASS, f"passed ({zone} zone, contract {gate.get('contract', '?')} "
                             f"v{gate.get('contract_version', '?')})")
  if gate.get("bypassed"):
    rules = ", ".join(map(str, gate.get("bypassed_rules") or [])) or "unnamed"
    status = FAIL if bypassed_gate == NO_GO else WARN
    return Row("gate", status, f"BYPASSED with --force_under_provisioned ({zone} zone); rules "
                               f"bypassed: {rules}")
  return Row("gate", FAIL, f"refused ({zone} zone) and not bypassed: the run should not exist")


def _fmt(x: float) -> str:
  return f"{x:.4f}"


def target_row(target: Target, value: float | None, error: str = "") -> Row:
  """One target against its measured value (None: not measured, `error` says why)."""
  check = target.name
  if value is None or not math.isfinite(value):
    return Row(check, FAIL, f"not measured: {error or value}")
  op = ">=" if target.at_least else "<="
  miss = (target.bound - value) if target.at_least else (value - target.bound)
  said = f"{_fmt(value)} {op} {_fmt(target.bound)}"
  if miss <= 0:
    return Row(check, PASS, said + (f" (margin {_fmt(-miss)})"))
  if target.tolerance > 0 and miss <= target.tolerance:
    return Row(check, WARN, f"{_fmt(value)} misses {op} {_fmt(target.bound)} by {_fmt(miss)}, "
                            f"within the tolerance {_fmt(target.tolerance)}")
  form = (f"beyond the tolerance {_fmt(target.tolerance)}" if target.tolerance > 0
          else "strict target")
  return Row(check, FAIL, f"{_fmt(value)} misses {op} {_fmt(target.bound)} by {_fmt(miss)} "
                          f"({form})")


def fingerprint_row(difference: float | None, error: str = "") -> Row:
  """The validated restore: `error` is its refusal (lying metadata, damaged arrays)."""
  if error:
    return Row("fingerprint", FAIL, error)
  if difference is None:
    return Row("fingerprint", WARN, "no fingerprint recorded: the metadata is unverified")
  return Row("fingerprint", PASS, f"restored through the validated path; fingerprint "
                                  f"reproduced (|diff| {difference:.2g})")


def export_row(max_diff: float | None, positions: int, tolerance: float,
               tokenizer_equal: bool | None, error: str = "") -> Row:
  """The export round trip: float32 logits of transformers vs pregate at `positions`
  positions, and AutoTokenizer's ids vs pregate's."""
  check = "export round trip"
  if error:
    return Row(check, FAIL, error)
  said = (f"max |logit diff| {max_diff:.2g} over {positions} positions (tolerance "
          f"{tolerance:g}); tokenizer ids {'equal' if tokenizer_equal else 'DIFFER'}")
  ok = max_diff is not None and max_diff <= tolerance and tokenizer_equal
  return Row(check, PASS if ok else FAIL, said)


def distinct(ids: Sequence[int], n: int = 2) -> float:
  """Distinct-n: unique n-grams / n-grams of one sample (1.0 for fewer than n tokens)."""
  grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 1.0


def generation_row(greedy: Sequence[Sequence[int]], sampled: Sequence[Sequence[int]],
                   min_distinct_2: float, error: str = "") -> Row:
  """Degenerate generation fails: any sample all one token, or a sampled one whose distinct-2
  is below the floor (greedy decoding of a small model loops by nature: reported, not judged)."""
  check = "generation"
  if error:
    return Row(check, FAIL, error)
  if not greedy or not sampled:
    return Row(check, FAIL, "no samples generated")
  flat = [s for s in (*greedy, *sampled) if len(set(s)) <= 1]
  d_greedy = min(distinct(s) for s in greedy)
  d_sampled = min(distinct(s) for s in sampled)
  said = (f"{len(greedy)} greedy + {len(sampled)} sampled continuations of "
          f"{len(sampled[0])} tokens: min distinct-2 {d_sampled:.2f} sampled (floor "
          f"{min_distinct_2:g}), {d_greedy:.2f} greedy")
  if flat:
    return Row(check, FAIL, f"{len(flat)} sample(s) repeat one token; " + said)
  return Row(check, PASS if d_sampled >= min_distinct_2 else FAIL, said)


def install_row(ok: bool | None, detail: str) -> Row:
  """None: not run (no interpreter could be started, or the contract turns it off)."""
  return Row("install", SKIP if ok is None else PASS if ok else FAIL, detail)


def skipped(check: str, why: str) -> Row:
  return Row(check, SKIP, why)


def verdict(rows: Sequence[Row]) -> str:
  """NO-GO if any row failed; WARN if any warned or was skipped; else GO."""
  statuses = {r.status for r in rows}
  if FAIL in statuses:
    return NO_GO
  return WARN if statuses & {WARN, SKIP} else GO
