"""Checkpoint I/O with orbax: params, optimizer state, data-iterator state and JSON metadata.

Retention keeps the newest `keep` saves AND the `keep_best` lowest-val-loss ones. orbax's plain
`best_fn` + `max_to_keep` can delete the newest save (a resume would then go back in time), so
the two rules are combined with `AnyPreservationPolicy`. `best_fn` is still set: without it
orbax does not persist a save's metrics, and after a restart BestN would see no metrics and could
delete the best checkpoint.
"""
from __future__ import annotations

import logging as py_logging
import os
import sys
import threading
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm

from core.checks import first_line
from core.errors import CheckpointError, ConfigError
from core.progress import Progress
from train.ckpt import metadata
from train.ckpt.stepspec import parse_step

METRIC = "val_loss"
# What a failed array read looks like, anywhere in an exception's chain (orbax wraps
# tensorstore's error; its other pending shard reads fail later on background threads).
_READ_ERRORS = ("Encountered error while reading array", "Error reading", "Event loop is closed",
                "FAILED_PRECONDITION", "DATA_LOSS", "NOT_FOUND")
_quieted = False


def _chain(err: BaseException | None) -> list[BaseException]:
  out: list[BaseException] = []
  while err is not None and err not in out:
    out.append(err)
    err = err.__cause__ or err.__context__
  return out


def is_read_error(err: BaseException | None) -> bool:
  return any(any(m in str(e) for m in _READ_ERRORS) for e in _chain(err))


def read_error_line(err: BaseException) -> str:
  """The root cause of a failed array read as one line: tensorstore's own message (which
  names the array and what is wrong with it), not orbax's wrapper and its spec dump."""
  root = _chain(err)[-1]
  return " ".join(first_line(root, 400).split())


class _DropBackgroundReadErrors(py_logging.Filter):
  """asyncio's 'Future exception was never retrieved' for a failed shard read."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not (record.exc_info and is_read_error(record.exc_info[1]))


def quiet_background_read_errors() -> None:
  """When one shard read fails, orbax's other pending reads fail too, on tensorstore and asyncio
  threads, and print pages of tracebacks ('Event loop is closed', 'Future exception was never
  retrieved', 'Exception ignored in: <coroutine _read_array_index_and_device_put>') that would
  bury pregate's one-line error. They repeat the error the reading thread reports, so from the
  first array read on they are dropped; anything else still prints, and so does any exception
  on the main thread. Installed before reading, since a background thread can fail before the
  main thread hears of it."""
  global _quieted
  if _quieted:
    return
  _quieted = True
  prev_unraisable, prev_uncaught, prev_thread = (sys.unraisablehook, sys.excepthook,
                                                 threading.excepthook)

  def unraisable(hook: Any) -> None:
    if is_read_error(hook.exc_value) or "_read_array" in repr(hook.object):
      return
    prev_unraisable(hook)

  def uncaught(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    # A callback raising on a library's native thread is printed through sys.excepthook.
    if threading.current_thread() is threading.main_thread() or not is_read_error(value):
      prev_uncaught(kind, value, tb)

  def thread(args: Any) -> None:
    if not is_read_error(args.exc_value):
      prev_thread(args)

  sys.unraisablehook, sys.excepthook, threading.excepthook = unraisable, uncaught, thread
  py_logging.getLogger("asyncio").addFilter(_DropBackgroundReadErrors())


def _handlers() -> dict[str, Any]:
  # Explicit handlers: without them a fresh manager reports None for each item's metadata.
  return {"params": ocp.StandardCheckpointHandler(),
          "opt_state": ocp.StandardCheckpointHandler(),
          "data": grain.checkpoint.CheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler()}


class Checkpointer:
  """One run's checkpoint directory (`WORKDIR/checkpoints`)."""

  def __init__(self, directory: str, *, keep: int = 2, keep_best: int = 1,
               async_save: bool = True, read_only: bool = False,
               fault_hook: Callable[[int], None] | None = None):
    # read_only: never saves, so orbax never deletes (its own read_only mode only adds warnings).
    # fault_hook(step) runs before each save: the seam tests use to make a write fail.
    self.directory = os.path.abspath(directory)
    self._fault_hook = fault_hook
    policies = [cm.LatestN(n=max(keep, 1))]
    if keep_best > 0:
      policies.append(cm.BestN(get_metric_fn=lambda m: m[METRIC], reverse=True, n=keep_best,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        # Deletion is decided by preservation_policy alone; best_fn is what makes orbax write
        # each save's metrics to disk, so best_step() and BestN still see them after a reopen.
        best_fn=lambda m: m[METRIC], best_mode="min",
        enable_async_checkpointing=async_save, create=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The saved step with the lowest recorded val loss (None if no save has one)."""
    scored = [(m[METRIC], s) for s in self.steps()
              if (m := self.manager.metadata(s).metrics) and METRIC in m]
    return min(scored)[1] if scored else None

  def resolve(self, step: str | int) -> int:
    """'latest' | 'best' | N (int or digits) -> a step that exists, or a CheckpointError
    saying which do."""
    steps = self.steps()
    if not steps:
      raise CheckpointError(f"no checkpoints in {self.directory}")
    try:
      spec = parse_step(step)
    except ConfigError:
      spec = None  # not a step spelling: reported below with the steps that exist
    found = {"latest": self.latest_step(), "best": self.best_step()}.get(spec, spec)
    if found not in steps:
      raise CheckpointError(f"checkpoint step {step!r} not found in {self.directory}; "
                            f"available: {steps}")
    return found

  def save(self, step: int, params: Any, opt_state: Any, data_iter: Any,
           meta: metadata.Metadata, val_loss: float | None = None) -> None:
    """Start an (async) save; arrays are copied off the device before this returns, so the
    next donating step cannot corrupt it. `opt_state` None: parameters only (an import)."""
    if self._fault_hook is not None:
      self._fault_hook(step)
    items = {"params": ocp.args.StandardSave(params),
             "meta": ocp.args.JsonSave(metadata.encode(meta))}
    if opt_state is not None:
      items["opt_state"] = ocp.args.StandardSave(opt_state)
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    metrics = {METRIC: float(val_loss)} if val_loss is not None else None
    self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)

  def set_aside(self, steps: list[int], why: str = "damaged") -> None:
    """Rename step dirs to `<step>.<why>-<n>` (damaged, or rolled-back: kept for inspection,
    invisible to orbax), so the run can save those steps again after resuming from an older
    one."""
    for step in steps:
      src = os.path.join(self.directory, str(step))
      n = 0
      while os.path.exists(dst := f"{src}.{why}-{n}"):
        n += 1
      os.rename(src, dst)
    self.manager.reload()

  def verify_arrays(self, step: int) -> int:
    """Read every stored array (onto one device) to prove the files are whole; returns the
    bytes read. A truncated or missing array file raises CheckpointError naming the step."""
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    read, progress = 0, None
    quiet_background_read_errors()
    try:
      # opt_state too, unless orbax recorded the step as parameters-only (an HF import).
      saved = getattr(self.manager.metadata(step), "item_handlers", None)
      names = ["params"] + (["opt_state"] if not saved or "opt_state" in saved else [])
      sizes = {k: _stored_bytes(self.array_signature(step, k)) for k in names}
      progress = Progress(f"verifying {self.directory}/{step}", sum(sizes.values()))
      for name in names:  # one item at a time: the bar moves, and peak memory is one item
        got = self.manager.restore(
            step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(
                fallback_sharding=one)}))
        read += sum(x.nbytes for x in jax.tree.leaves(got[name]))
        del got
        progress.update(sizes[name])
    except CheckpointError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"checkpoint {self.directory}/{step} is damaged: its arrays cannot "
                            f"be read ({read_error_line(e)})") from None
    finally:
      if progress is not None:
        progress.close()
    return read

  def read_meta(self, step: int) -> metadata.Metadata | None:
    """The metadata record, read from its file (no arrays, no manager state); None if absent."""
    return metadata.read(self.directory, step)

  def array_signature(self, step: int, item: str = "params") -> dict[str, tuple[tuple, str]]:
    """Stored 'a/b/c' -> (shape, dtype) from orbax's array metadata; reads no array data.
    Unreadable array metadata (a damaged checkpoint) is a CheckpointError naming the step."""
    try:
      meta = self.manager.item_metadata(step)[item]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"checkpoint {self.directory}/{step}: stored array metadata is "
                            f"unreadable ({type(e).__name__}: {first_line(e)})") from e
    if meta is None:
      raise CheckpointError(f"checkpoint {self.directory}/{step} has no '{item}' arrays")
    flat = jax.tree_util.tree_flatten_with_path(
        meta, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): (tuple(m.shape), str(m.dtype))
            for path, m in flat}

  def restore(self, step: int, *, params_target: Any, opt_target: Any | None = None,
              data_iter: Any | None = None) -> dict[str, Any]:
    """Strict restore onto abstract targets (shape, dtype, sharding): no truncation, no padding,
    no partial trees. Callers validate the signature first, because orbax casts dtypes."""
    items = {"params": ocp.args.StandardRestore(params_target)}
    if opt_target is not None:
      items["opt_state"] = ocp.args.StandardRestore(opt_target)
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    quiet_background_read_errors()
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      if not is_read_error(e):
        raise
      raise CheckpointError(f"checkpoint {self.directory}/{step} is damaged: its arrays cannot "
                            f"be read ({read_error_line(e)})") from None
    return {k: restored[k] for k in items}

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _stored_bytes(signature: dict[str, tuple[tuple, str]]) -> int:
  """Bytes the arrays of an array signature ('a/b' -> (shape, dtype)) hold in memory."""
  return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
             for shape, dtype in signature.values())
