"""Where a run came from: library versions and the git commit, recorded in every checkpoint."""
from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
from typing import Any, Mapping

_LIBS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorstore", "grain",
         "absl-py", "ml_collections")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
  out = {}
  for name in _LIBS:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "missing"
  return out


@functools.lru_cache(maxsize=None)
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


def resolve_path(path: str) -> str:
  """Config paths are relative to the repo root, so runs work from any directory."""
  if not path or os.path.isabs(path) or "://" in path:
    return path
  return os.path.join(REPO_ROOT, path)


def data_dirs(data_cfg: Mapping[str, Any], workdir: str) -> tuple[str, str]:
  """(prepared data dir, val split dir) of a run: config paths, or WORKDIR/data when unset."""
  data_dir = resolve_path(data_cfg.get("data_dir", "")) or os.path.join(workdir, "data")
  return data_dir, resolve_path(data_cfg.get("val_dir", "")) or data_dir
