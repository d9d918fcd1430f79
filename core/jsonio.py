"""JSON files that readers see whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any


def write_json_atomic(path: str, obj: Any) -> None:
  """Readers see the old file or the new one, never a partial write: temp file in the same
  directory, fsync, then one rename."""
  fd, tmp = tempfile.mkstemp(prefix=f"{os.path.basename(path)}.tmp-",
                             dir=os.path.dirname(path) or ".")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(obj, f, indent=2)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; orbax's own files are world-readable.
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
