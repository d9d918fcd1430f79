"""Read the guardrail contracts, gates/contracts/*.yaml: the one place their files are opened.

A contract is a gate's rule as data (thresholds, zones, version, invariants, falsifiers), so the
numbers live in one reviewed place and every falsifier names the test that could break it. The
files ship inside the gates package (package data) because the rule belongs to its gate, but
gates/ only decides: it never opens a file (import-linter contract gates-decide-only). So the
reading is here, below every layer that needs it: `load(name)` returns the parsed mapping,
checked for the format every contract shares, and the gate's own module turns it into the typed
value its decisions take as an argument (gates.chinchilla_contract.parse).
"""
from __future__ import annotations

import pathlib
import re
from typing import Any

import yaml

from core.errors import ContractError
from core.paths import REPO_ROOT

CONTRACT_DIR = pathlib.Path(REPO_ROOT) / "gates" / "contracts"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def contract_paths() -> list[pathlib.Path]:
  """Every contract file, sorted, so tooling and tests can check them all generically."""
  return sorted(CONTRACT_DIR.glob("*.yaml"))


def load(name: str) -> dict[str, Any]:
  """Contract `name` (file stem, e.g. 'chinchilla-gate-v1'), parsed and format-checked."""
  return load_contract(CONTRACT_DIR / f"{name}.yaml")


def load_contract(path: str | pathlib.Path) -> dict[str, Any]:
  """Parse and validate one contract file; raises ContractError naming the problem."""
  path = pathlib.Path(path)
  try:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
  except (OSError, yaml.YAMLError) as e:
    raise ContractError(f"cannot read contract {path}: {e}") from e
  problems = _problems(data)
  if problems:
    raise ContractError(f"invalid contract {path}: " + "; ".join(problems))
  return data


def read_yaml(path: str | pathlib.Path, what: str = "contract") -> dict[str, Any]:
  """A user's YAML mapping (a ship contract, configs/ship_*.yaml), parsed; a file that is
  missing, does not parse or is not a mapping is one ContractError line. Its fields are checked
  by the gate that reads it (gates.ship.parse)."""
  path = pathlib.Path(path)
  try:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
    raise ContractError(f"cannot read {what} {path}: {' '.join(str(e).split())}") from None
  if not isinstance(data, dict):
    raise ContractError(f"{what} {path} must be a YAML mapping, got {type(data).__name__}")
  return data


def _problems(data: Any) -> list[str]:
  if not isinstance(data, dict):
    return ["top level must be a mapping"]
  out = []
  if not isinstance(data.get("contract"), str) or not data["contract"]:
    out.append("`contract` (its name) must be a non-empty string")
  if not isinstance(data.get("version"), str) or not _VERSION.match(data["version"]):
    out.append(f"`version` must be a quoted 'X.Y.Z' string, got {data.get('version')!r}")
  invariants = data.get("invariants")
  if not isinstance(invariants, list) or not invariants:
    out.append("`invariants` must be a non-empty list")
  elif not all(isinstance(i, dict) and str(i.get("id", "")).startswith("INV-") for i in invariants):
    out.append("every invariant needs an `id` starting with 'INV-'")
  falsifiers = data.get("falsifiers")
  if not isinstance(falsifiers, list) or not falsifiers:
    out.append("`falsifiers` must be a non-empty list")
  else:
    for f in falsifiers:
      if not isinstance(f, dict) or not str(f.get("id", "")).startswith("FALSIFY-"):
        out.append(f"falsifier {f!r} needs an `id` starting with 'FALSIFY-'")
      elif not f.get("description") or not falsifier_tests(f):
        out.append(f"falsifier {f['id']} needs a `description` and a `test`")
  return out


def falsifier_tests(falsifier: dict[str, Any]) -> list[str]:
  """A falsifier's pytest node ids: its `test:` field may be one id or a list of them."""
  tests = falsifier.get("test")
  if isinstance(tests, str):
    return [tests] if tests else []
  if isinstance(tests, list) and all(isinstance(t, str) and t for t in tests):
    return list(tests)
  return []
