"""Workdir ownership: a run directory belongs to one experiment.

Pure comparison of the config recorded when the workdir was first used with the config of the
command now starting there. Identity fields (architecture, data, seed) may never change;
schedule fields change the run's trajectory and need an explicit opt-in; the rest is safe.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from core.errors import ConfigError

IDENTITY = ("model.", "data.", "seed")
# The distillation loss's weights change the trajectory like the optimizer's.
SCHEDULE = ("train_steps", "batch.", "optimizer.", "schedule.", "distill.")
# How many processes tokenize (the prepared data is the same) and the model's execution-only
# fields (remat, attention backend, scanned layers, loss tile): tensors are identical. The
# teacher's spelling (a path, relative or absolute, pinned to a step or not) may change: the
# teacher itself is identified by content, recorded in every checkpoint and compared on resume
# (train/run/teacher.py), which refuses a different one.
SAFE = ("data.workers", "model.remat", "model.attention", "model.scan_layers",
        "model.loss_chunk", "logging.tensorboard", "logging.weight_norms", "distill.teacher")


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


def _kind(key: str) -> str:
  if key in SAFE:
    return "safe"
  if any(key == p or key.startswith(p) for p in IDENTITY):
    return "identity"
  if any(key == p or key.startswith(p) for p in SCHEDULE):
    return "schedule"
  return "safe"


def classify(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, list[str]]:
  """Differences grouped by kind, each as 'field: recorded -> current'."""
  old, new = flatten(recorded), flatten(current)
  out: dict[str, list[str]] = {"identity": [], "schedule": [], "safe": []}
  for key in sorted(set(old) | set(new)):
    if old.get(key, "<absent>") != new.get(key, "<absent>"):
      # A field the workdir's first run did not have yet (added to the code since) is safe:
      # anything it changes about the tensors is refused by the checkpoint's own checks.
      kind = "safe" if key not in old else _kind(key)
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
