"""Where the source checkout is, and how config paths resolve against it."""
from __future__ import annotations

import os
from typing import Any, Mapping

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_path(path: str) -> str:
  """Config paths are relative to the repo root, so runs work from any directory."""
  if not path or os.path.isabs(path) or "://" in path:
    return path
  return os.path.join(REPO_ROOT, path)


def data_dirs(data_cfg: Mapping[str, Any], workdir: str) -> tuple[str, str]:
  """(prepared data dir, val split dir) of a run: config paths, or WORKDIR/data when unset."""
  data_dir = resolve_path(data_cfg.get("data_dir", "")) or os.path.join(workdir, "data")
  return data_dir, resolve_path(data_cfg.get("val_dir", "")) or data_dir
