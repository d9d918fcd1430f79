"""Load the guardrail contracts in gates/contracts/*.yaml.

A contract is the rule as data (thresholds, zones, version, invariants, falsifiers), so a gate's
numbers live in exactly one reviewed place and every falsifier names the test that could break it.
Parsing is cached: gates consult their contract on every decision.

The one module in gates/ that reads a file, and only the rules shipped inside the package (the
import-linter contract gates-decide-only names it as its one exception): a gate's rule is part of
the gate, so every caller gets the same decision without handing the rule in.
"""
from __future__ import annotations

import copy
import functools
import pathlib
import re
from typing import Any

import yaml

from core.errors import PregateError

CONTRACT_DIR = pathlib.Path(__file__).resolve().parent / "contracts"
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


class ContractError(PregateError):
  """A contract file that is missing or malformed; the gate cannot decide without it."""


def contract_paths() -> list[pathlib.Path]:
  """Every contract file, sorted, so tooling and tests can check them all generically."""
  return sorted(CONTRACT_DIR.glob("*.yaml"))


def load_contract(path: str | pathlib.Path) -> dict[str, Any]:
  """Parse and validate one contract file (uncached); raises ContractError naming the problem."""
  path = pathlib.Path(path)
  try:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
  except (OSError, yaml.YAMLError) as e:
    raise ContractError(f"cannot read contract {path}: {e}") from e
  problems = _problems(data)
  if problems:
    raise ContractError(f"invalid contract {path}: " + "; ".join(problems))
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


@functools.cache
def _cached(path: pathlib.Path) -> dict[str, Any]:
  return load_contract(path)


def _named(name: str) -> dict[str, Any]:
  # Keyed by path, so pointing CONTRACT_DIR elsewhere (tests) never serves a stale parse.
  return _cached(CONTRACT_DIR / f"{name}.yaml")


def get_contract(name: str) -> dict[str, Any]:
  """A private copy of contract `name` (file stem, e.g. 'chinchilla-gate-v1')."""
  return copy.deepcopy(_named(name))


def version(name: str) -> str:
  return _named(name)["version"]


def threshold(name: str, key: str) -> int:
  """An integer threshold; ints only, because gates compare with exact integer arithmetic."""
  value = _named(name).get("thresholds", {}).get(key)
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ContractError(f"contract {name}: thresholds.{key} must be a positive integer, "
                        f"got {value!r}")
  return value
