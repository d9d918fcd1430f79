"""Per-source token counts from a prepared data dir's `manifest.json`, with the stdlib only.

Written here, not in train/data, so the planner and gates (which may not import train/) can read
the same figures the run uses: `manifest["sources"][name]["train_tokens"]` is the unique
training tokens of each source (one source for a plain prepared dir, one per entry of
`data.sources` for a mixture).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping


def source_train_tokens(manifest: Mapping[str, Any]) -> dict[str, int]:
  """{source name: unique train tokens}; a manifest without `sources` (an older format) counts
  as one source named 'corpus'."""
  sources = manifest.get("sources")
  if isinstance(sources, Mapping) and sources:
    return {str(name): int(entry["train_tokens"]) for name, entry in sources.items()}
  return {"corpus": int(manifest["train_tokens"])}


def read_source_train_tokens(data_dir: str) -> dict[str, int] | None:
  """`source_train_tokens` of DATA_DIR/manifest.json; None when there is no readable one."""
  try:
    with open(os.path.join(data_dir, "manifest.json"), encoding="utf-8") as f:
      return source_train_tokens(json.load(f))
  except (OSError, ValueError, KeyError, TypeError):
    return None
