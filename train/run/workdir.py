"""The run directory: is it usable, which experiment owns it (`run.json`), and recording that."""
from __future__ import annotations

import json
import os
import time
from typing import Any

from core.errors import ConfigError
from core.jsonio import write_json_atomic
from gates import ownership

RUN_RECORD = "run.json"


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
  except (OSError, ValueError, KeyError) as e:
    raise ConfigError(f"{path} is unreadable ({e}); it records which experiment owns "
                      f"--workdir={workdir}: restore it or use a new workdir") from None
  return ownership.check(workdir, recorded, cfg, allow_change)


def record_owner(workdir: str, cfg: dict[str, Any], gate: dict[str, Any],
                 changes: dict[str, list[str]]) -> None:
  """WORKDIR/run.json: the experiment that owns the workdir, plus every accepted change."""
  path = os.path.join(workdir, RUN_RECORD)
  if os.path.exists(path):
    with open(path) as f:
      owner = json.load(f)
    if changes.get("schedule") or changes.get("safe"):
      owner.setdefault("changes", []).append({"time": time.time(), **changes})
      owner["config"] = cfg
  else:
    owner = {"config": cfg, "config_hash": ownership.config_hash(cfg), "gate": gate,
             "created": time.time()}
  write_json_atomic(path, owner)
