"""TensorBoard event files for a run, written with tensorboardX (no TensorFlow needed).

`TensorBoardSink.write(record)` takes the same dict records the loop appends to metrics.jsonl:
every number becomes the scalar `<event>/<key>` at the record's step, every string the text
`<event>/<key>`. View with `tensorboard --logdir WORKDIR` (tensorboard is an optional extra).

A resumed run appends a new event file to the same directory. TensorBoard shows the newest value
of a step (a record for step s preempts that tag's records at steps >= s), so a run that crashed
after its last checkpoint and re-did those steps shows each step once, with the re-done values:
the sink writes tensorboardX's purge marker (a SessionLog START at start_step + 1) when older
files hold steps past the resume point, and never writes a (tag, step) that is already on disk at
or before it. `read_scalars` reads the files back with those same rules.
"""
from __future__ import annotations

import glob
import json
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

LOGDIR = "tensorboard"
_EVENT_GLOB = "events.out.tfevents.*"
_TEXT_SUFFIX = "/text_summary"  # tensorboardX appends it to every text tag
_NOT_SCALARS = ("event", "time", "step")


def logdir(workdir: str) -> str:
  return os.path.join(workdir, LOGDIR)


def event_files(directory: str) -> list[str]:
  """The directory's event files, oldest first (each process writes one; its name starts with
  the creation time and ends with the sink's sequence number)."""
  return sorted(glob.glob(os.path.join(directory, _EVENT_GLOB)), key=_file_order)


def _file_order(path: str) -> tuple[int, int, str]:
  name = os.path.basename(path)
  parts = name.split(".")
  created = int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0
  seq = int(parts[-1][1:]) if parts[-1][:1] == "s" and parts[-1][1:].isdigit() else 0
  return created, seq, name


def read_events(path: str) -> Iterator[Any]:
  """Event protos of one file, in order. A record cut short (a crash while writing) ends the
  file: what came before it is kept."""
  from google.protobuf.message import DecodeError
  from tensorboardX.proto import event_pb2
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    end = pos + 12 + length + 4
    if end > len(data):
      return
    try:
      yield event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
    except DecodeError:
      return
    pos = end


def read_run(directory: str) -> dict[str, dict[int, Any]]:
  """{tag: {step: scalar float | text str}} as TensorBoard shows it: a purge marker drops every
  earlier step >= its step, and a tag's record at step s drops that tag's earlier steps >= s."""
  from tensorboardX.proto.event_pb2 import SessionLog
  out: dict[str, dict[int, Any]] = {}
  for path in event_files(directory):
    for event in read_events(path):
      if event.HasField("session_log") and event.session_log.status == SessionLog.START:
        for series in out.values():
          for step in [s for s in series if s >= event.step]:
            del series[step]
      if not event.HasField("summary"):
        continue
      for value in event.summary.value:
        if value.HasField("simple_value"):
          tag, v = value.tag, value.simple_value
        elif value.tag.endswith(_TEXT_SUFFIX) and value.tensor.string_val:
          tag, v = value.tag[:-len(_TEXT_SUFFIX)], value.tensor.string_val[0].decode()
        else:
          continue
        series = out.setdefault(tag, {})
        if series and next(reversed(series)) >= event.step:  # out of order: rare, so O(n)
          for step in [s for s in series if s >= event.step]:
            del series[step]
        series[event.step] = v
  return out


def read_scalars(directory: str) -> dict[str, dict[int, float]]:
  return {tag: s for tag, s in read_run(directory).items()
          if all(isinstance(v, float) for v in s.values())}


def _raw_tag_steps(directory: str) -> dict[str, list[int]]:
  """Every (tag, step) in the files, ignoring purges (what is physically on disk)."""
  out: dict[str, list[int]] = {}
  for path in event_files(directory):
    for event in read_events(path):
      for value in event.summary.value if event.HasField("summary") else ():
        tag = value.tag.removesuffix(_TEXT_SUFFIX)
        out.setdefault(tag, []).append(event.step)
  return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists and None become strings (hparams take scalars)."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    elif isinstance(value, (bool, int, float, str)):
      out[name] = value
    else:
      out[name] = json.dumps(value)
  return out


def _summary_writer_class() -> type:
  """tensorboardX's SummaryWriter, imported without torch: its writer imports torch when it is
  installed only to accept torch tensors, which costs a run 2.5 s of start-up (a third of a
  tiny run's) and we log Python floats. torch stays importable afterwards."""
  import sys
  if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class TensorBoardSink:
  """Mirrors metrics.jsonl records into WORKDIR/tensorboard; a no-op where enabled is False
  (processes other than 0). `start_step` is the step the run starts or resumes from; without it
  the sink only refuses to write steps at or before what each tag already has on disk."""

  def __init__(self, workdir: str, enabled: bool = True, start_step: int | None = None,
               flush_secs: int = 10):
    self.directory = logdir(workdir)
    self._writer = None
    self._step = start_step or 0
    self._last: dict[str, int] = {}
    if not enabled:
      return
    SummaryWriter = _summary_writer_class()
    existing = event_files(self.directory) if os.path.isdir(self.directory) else []
    written = _raw_tag_steps(self.directory) if existing else {}
    purge = None
    if start_step is not None and any(s > start_step for v in written.values() for s in v):
      purge = start_step + 1  # Steps after the checkpoint belong to the crashed attempt.
    keep_below = purge if purge is not None else float("inf")
    self._last = {tag: max(kept) for tag, steps in written.items()
                  if (kept := [s for s in steps if s < keep_below])}
    self._writer = SummaryWriter(self.directory, purge_step=purge, flush_secs=flush_secs,
                                 filename_suffix=f".s{len(existing):05d}")

  @property
  def enabled(self) -> bool:
    return self._writer is not None

  def _fresh(self, tag: str, step: int) -> bool:
    """True once per (tag, step) and only for steps after what the tag already holds."""
    if step <= self._last.get(tag, -1):
      return False
    self._last[tag] = step
    return True

  def write(self, record: dict[str, Any]) -> None:
    """One metrics.jsonl record: numbers (and booleans as 0/1) as scalars, strings as text,
    other values as JSON text; records without a step are filed at the latest step seen."""
    if self._writer is None:
      return
    step = int(record.get("step", self._step))
    self._step = max(self._step, step)
    event, walltime = record.get("event", "record"), record.get("time", time.time())
    if event == "rollback":  # the steps after `step` are re-done: TensorBoard drops the old ones
      from tensorboardX.proto.event_pb2 import Event, SessionLog
      self._writer._get_file_writer().add_event(
          Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))
      self._last = {tag: min(last, step) for tag, last in self._last.items()}
      self._step = step
    for key, value in record.items():
      if key in _NOT_SCALARS or value is None:
        continue
      tag = f"{event}/{key}"
      if not self._fresh(tag, step):
        continue
      if isinstance(value, (bool, int, float)):
        self._writer.add_scalar(tag, float(value), step, walltime=walltime)
      else:
        text = value if isinstance(value, str) else json.dumps(value)
        self._writer.add_text(tag, text, step, walltime=walltime)
    if event in ("end", "gate", "step0_check", "rollback"):
      self._writer.flush()  # Rare, important records reach disk even if the process dies.

  def write_text(self, tag: str, text: str, step: int | None = None) -> None:
    step = self._step if step is None else step
    if self._writer is not None and self._fresh(tag, step):
      self._writer.add_text(tag, text, step)

  def write_config(self, config: dict[str, Any], step: int | None = None) -> None:
    """The whole config as text (a Markdown code block) and as hparams."""
    self.write_text("config", "    " + json.dumps(config, indent=2, sort_keys=True,
                                                  default=str).replace("\n", "\n    "), step)
    self.write_hparams(flatten(config), ("train/loss", "eval/val_loss"), step)

  def write_hparams(self, hparams: dict[str, Any], metric_tags: tuple[str, ...] = (),
                    step: int | None = None) -> None:
    """The hparams dashboard's session for this run (once; metrics are the named scalar tags)."""
    from tensorboardX.summary import hparams as hparams_summary
    step = self._step if step is None else step
    if self._writer is None or not self._fresh("_hparams_/experiment", step):
      return
    for summary in hparams_summary(hparams, {t: 0.0 for t in metric_tags}):
      self._writer.file_writer.add_summary(summary, step)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
