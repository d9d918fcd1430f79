"""Where a prepared dir is built and how it becomes visible: locally in a temp dir beside the
destination, renamed into place once complete; remotely arrays first and the manifest last. A
dir without a manifest, or whose arrays do not match it, is never taken as prepared."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import tensorstore as ts

from core.errors import DataError
from train.data import store


def write_dir(data_dir: str, fill: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
  """Arrays first, manifest last: a dir without a manifest is never taken as prepared."""
  kv = store.kvstore(data_dir)
  kv.delete_range(ts.KvStore.KeyRange(store.MANIFEST, store.MANIFEST + "\0")).result()
  manifest = fill(data_dir)
  kv.write(store.MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=True).encode()).result()
  return manifest


def _check_replaceable(out: Path) -> None:
  """Refuse to replace a directory that holds anything but a prepared data dir."""
  if not out.exists():
    return
  if not out.is_dir():
    raise DataError(f"data dir {out} exists and is not a directory; choose a new directory")
  extra = sorted(set(os.listdir(out)) - {*store.ARRAYS, store.MANIFEST})
  if extra:
    raise DataError(f"data dir {out} already holds other files (e.g. {extra[0]!r}); choose a new "
                    "or empty directory for prepared data")


def _owner() -> str:
  """host-pid of this process, read when a temp dir is made (a process forked after import
  has another pid than the one that imported this module)."""
  return f"{socket.gethostname()}-{os.getpid()}"


def _remove_stale(out: Path) -> None:
  """Temp dirs beside `out` left by a preparation on this host that was killed (its process
  is gone): never a complete dir (no rename happened), only disk to reclaim."""
  host = socket.gethostname()
  for tmp in out.parent.glob(f".{out.name}.tmp-{host}-*"):
    pid = tmp.name[len(f".{out.name}.tmp-{host}-"):].split("-")[0]
    if pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def write_local_atomic(out: Path, fill: Callable[[str], dict[str, Any]],
                       reuse_if: dict[str, Any]) -> dict[str, Any]:
  """Build in a temp dir beside `out`, then rename it into place. Directories this call had to
  create are removed again if it fails, so a refused run leaves no workdir behind."""
  created, p = [], out.parent
  while not p.exists():
    created.append(p)
    p = p.parent
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = None
  try:
    _check_replaceable(out)
    _remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{_owner()}-", dir=out.parent))
    manifest = write_dir(str(tmp), fill)
    if out.exists():
      old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
      os.rename(out, old)
      shutil.rmtree(old, ignore_errors=True)
    try:
      os.rename(tmp, out)
    except OSError:
      # Another process (e.g. another host of this run) renamed its copy in first.
      theirs = reusable_manifest(str(out), **reuse_if)
      if theirs is None:
        raise DataError(f"data dir {out} was replaced while preparing it; re-run so only one "
                        "process prepares the data") from None
      return theirs
    created = []
    return manifest
  finally:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
    for d in created:
      with contextlib.suppress(OSError):
        d.rmdir()


def _arrays_match(data_dir: str, manifest: dict[str, Any]) -> bool:
  """Cheap completeness check (metadata only): every array exists with the recorded length."""
  for split in store.SPLITS:
    for name, length, dtype in ((split, manifest[f"{split}_tokens"], manifest["dtype"]),
                                (split + store.OFFSETS, manifest[f"{split}_documents"] + 1,
                                 "int64")):
      try:
        arr = ts.open(store.zarr3_spec(store.join(data_dir, name)), open=True).result()
      except ValueError:
        return False
      if arr.shape != (length,) or arr.dtype.name != dtype:
        return False
  return True


def reusable_manifest(data_dir: str, *, source_sha256: str, settings: dict[str, Any],
                      tokenizer_fingerprint: str | None = None) -> dict[str, Any] | None:
  """The existing manifest if it was made from these bytes with these settings, else None."""
  try:
    manifest = store.load_manifest(data_dir)
  except DataError:
    return None
  same = (manifest["source_sha256"] == source_sha256 and manifest.get("settings") == settings
          and tokenizer_fingerprint in (None, manifest["tokenizer_fingerprint"]))
  return manifest if same and _arrays_match(data_dir, manifest) else None
