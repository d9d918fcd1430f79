"""Where a run came from: library versions and the git commit, recorded in every checkpoint."""
from __future__ import annotations

import functools
import importlib.metadata
import subprocess

from core.paths import REPO_ROOT

_LIBS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorstore", "grain",
         "absl-py", "ml_collections")


@functools.cache
def library_versions() -> dict[str, str]:
  out = {}
  for name in _LIBS:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "missing"
  return out


@functools.cache
def git_commit() -> str | None:
  """HEAD of the source checkout (with '+dirty' for local changes); None outside git."""
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=5, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=5).stdout
    return head + ("+dirty" if dirty.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return None
