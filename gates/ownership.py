"""Workdir ownership: a run directory belongs to one experiment.

Pure comparison of the config recorded when the workdir was first used with the config of the
command now starting there. Identity fields (architecture, data, seed) may never change;
schedule fields change the run's trajectory and need an explicit opt-in; the rest is safe.
Each field's kind is declared with it (gates/config_schema.py).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from core.errors import ConfigError
from gates import config_schema

# The buckets a difference falls in: an execution field (remat, attention backend, scanned
# layers, loss tile, tokenizing workers, mesh) leaves the tensors identical, so changing it is
# as safe as changing a bookkeeping field.
_BUCKET = {"identity": "identity", "schedule": "schedule", "execution": "safe", "safe": "safe"}


class WorkdirOwnershipError(ConfigError):
  """The workdir belongs to a different experiment (or a schedule change was not allowed)."""


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in cfg.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_hash(cfg: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(flatten(cfg), sort_keys=True, default=str).encode()
                        ).hexdigest()


def classify(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, list[str]]:
  """Differences grouped by kind, each as 'field: recorded -> current'."""
  old, new = flatten(recorded), flatten(current)
  out: dict[str, list[str]] = {"identity": [], "schedule": [], "safe": []}
  for key in sorted(set(old) | set(new)):
    if old.get(key, "<absent>") != new.get(key, "<absent>"):
      # A field the workdir's first run did not have yet (added to the code since) is safe:
      # anything it changes about the tensors is refused by the checkpoint's own checks.
      kind = "safe" if key not in old else _BUCKET[config_schema.kind_of(key)]
      out[kind].append(f"{key}: {old.get(key, '<absent>')!r} -> "
                             f"{new.get(key, '<absent>')!r}")
  return out


def check(workdir: str, recorded: Mapping[str, Any], current: Mapping[str, Any],
          allow_config_change: bool) -> dict[str, list[str]]:
  """Raise for identity changes, or schedule changes without the opt-in; return the diff."""
  diff = classify(recorded, current)
  if diff["identity"]:
    raise WorkdirOwnershipError(
        f"--workdir={workdir} belongs to a different experiment: " + "; ".join(diff["identity"])
        + ". Use a new --workdir for a new experiment")
  if diff["schedule"] and not allow_config_change:
    raise WorkdirOwnershipError(
        f"--workdir={workdir}: these changes alter the run's schedule: "
        + "; ".join(diff["schedule"]) + ". Pass --allow_config_change to continue with them "
        "(recorded in the checkpoint metadata), or restore the original values")
  return diff
