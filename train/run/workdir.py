"""The run directory: is it usable, which experiment owns it (`run.json`), and recording that.

`run.json` is written once a run has really started (its state loaded and proven, just before
the first step), so no refusal claims a workdir. A record whose run never got that far in
substance (no checkpoint, no train/eval/save record: it died before its first step, or an
older pregate wrote the record before refusing) does not hold the workdir hostage: it yields to
the new config, with a warning listing what changed.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging

from core.errors import ConfigError
from core.jsonio import write_json_atomic
from gates import ownership

RUN_RECORD = "run.json"
STARTED_EVENTS = ("train", "eval", "save")


def has_checkpoints(workdir: str) -> bool:
  """A committed, torn or set-aside checkpoint step under WORKDIR/checkpoints (names only)."""
  d = os.path.join(workdir, "checkpoints")
  return os.path.isdir(d) and any(n[:1].isdigit() for n in os.listdir(d))


def has_started(workdir: str) -> bool:
  """Whether the run that owns the workdir ever trained: a checkpoint, or a train, eval or save
  record in metrics.jsonl (read until the first one)."""
  if has_checkpoints(workdir):
    return True
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          if json.loads(line).get("event") in STARTED_EVENTS:
            return True
        except (ValueError, AttributeError):
          continue
  except OSError:
    return False
  return False


def check_usable(workdir: str) -> None:
  """A directory (or a path that can become one) that this user can write."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} is a file, not a directory; pick another path")
  probe = workdir
  while not os.path.exists(probe):
    probe = os.path.dirname(os.path.abspath(probe))
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir={workdir} is not writable ({probe}); pick a writable path")


def check_owner(workdir: str, cfg: dict[str, Any], allow_change: bool) -> dict[str, list[str]]:
  """Compare with WORKDIR/run.json (written by the run that owns the workdir); returns the
  accepted changes by kind, or raises for a different experiment."""
  path = os.path.join(workdir, RUN_RECORD)
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      recorded = json.load(f)["config"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    if not has_started(workdir):
      logging.warning("%s is unreadable (%s) but its run never started; it yields to this "
                      "config", path, e)
      return {"yielded": ["unreadable record"]}
    raise ConfigError(f"{path} is unreadable ({e}); it records which experiment owns "
                      f"--workdir={workdir}: restore it or use a new workdir") from None
  if not has_started(workdir):
    diff = ownership.classify(recorded, cfg)
    changed = diff["identity"] + diff["schedule"] + diff["safe"]
    if changed:
      logging.warning("%s belongs to a run that never started (no checkpoint, no step); it "
                      "yields to this config: %s", path, "; ".join(changed))
      return {"yielded": changed}
    return {}
  return ownership.check(workdir, recorded, cfg, allow_change)


def record_owner(workdir: str, cfg: dict[str, Any], gate: dict[str, Any],
                 changes: dict[str, list[str]]) -> None:
  """WORKDIR/run.json: the experiment that owns the workdir, plus every accepted change."""
  path = os.path.join(workdir, RUN_RECORD)
  if os.path.exists(path) and not changes.get("yielded"):
    with open(path) as f:
      owner = json.load(f)
    if changes.get("schedule") or changes.get("safe"):
      owner.setdefault("changes", []).append({"time": time.time(), **changes})
      owner["config"] = cfg
  else:
    owner = {"config": cfg, "config_hash": ownership.config_hash(cfg), "gate": gate,
             "created": time.time()}
  write_json_atomic(path, owner)
