"""How a user names a checkpoint: a run's workdir, its checkpoints dir or one step dir, and a
step `latest | best | N`, alone (`--step=`) or as `PATH[:STEP]` (`--init=`, `--teacher=`).
Parsed here only, so every command accepts the same spellings."""
from __future__ import annotations

import json
import os

from core.checks import is_int
from core.errors import CheckpointError, ConfigError

STEP_WORDS = ("latest", "best")


def parse_step(value: str | int | None, default: str = "latest") -> str | int:
  """'latest' | 'best' | N -> that word or an int; None or '' -> default."""
  if value is None or (isinstance(value, str) and not value.strip()):
    return default
  if is_int(value, 0):
    return value
  text = str(value).strip()
  if text.isdigit():
    return int(text)
  if text in STEP_WORDS:
    return text
  raise ConfigError(f"step {value!r} is not latest, best or a non-negative step number")


def split_path_step(spec: str) -> tuple[str, str | int]:
  """'PATH[:STEP]' -> (PATH, step); a suffix that is not a step stays part of the path."""
  head, sep, tail = spec.rpartition(":")
  if sep and head and (tail.isdigit() or tail in STEP_WORDS):
    return head, parse_step(tail)
  return spec, "latest"


def checkpoint_dir(path: str) -> str:
  """Accept a run's workdir or its checkpoints directory."""
  path = os.path.abspath(path)
  nested = os.path.join(path, "checkpoints")
  if os.path.isdir(nested):
    return nested
  if not os.path.isdir(path):
    raise CheckpointError(f"no checkpoint directory at {path}; pass a run's workdir or "
                          f"its checkpoints/ directory")
  return path


def locate(path: str, step: str | int | None) -> tuple[str, str | int]:
  """PATH (workdir, checkpoints dir or a step dir) and a step -> (checkpoints dir, step as
  given, for `Checkpointer.resolve`)."""
  path = os.path.abspath(path)
  name = os.path.basename(path)  # A step dir is named by its step.
  if not (name.isdigit() and not os.path.isdir(os.path.join(path, "checkpoints")) and any(
      os.path.exists(os.path.join(path, f)) for f in ("_CHECKPOINT_METADATA", "params", "meta"))):
    return checkpoint_dir(path), "latest" if step is None else step
  if step is not None and str(step) != name:
    raise ConfigError(f"{path} is the dir of step {name} but --step={step}; pass the "
                      f"checkpoints dir with --step, or the step dir alone")
  return os.path.dirname(path), int(name)


def resolve_on_disk(directory: str, step: str | int) -> int:
  """'latest' | 'best' | N -> a committed step, from file names (and each step's saved metrics
  for 'best') alone: no orbax manager, so it can run before the JAX backend starts."""
  step = parse_step(step)
  steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  if not steps:
    raise CheckpointError(f"no checkpoints in {directory}")
  if step == "latest":
    return steps[-1]
  if step == "best":
    scored = []
    for s in steps:
      try:
        with open(os.path.join(directory, str(s), "metrics", "metrics")) as f:
          scored.append((float(json.load(f)["val_loss"]), s))
      except (OSError, ValueError, KeyError, TypeError):
        continue
    if scored:
      return min(scored)[1]
  elif step in steps:
    return step
  raise CheckpointError(f"checkpoint step {step!r} not found in {directory}; available: {steps}")
