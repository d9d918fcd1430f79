"""Reading a run's metrics.jsonl: the records as the run's history, resumes and crashes included.

Each process that runs `train.main` on a workdir appends a segment that starts with a `gate`
record. A later segment that re-does steps (resumed from a checkpoint older than the crash)
supersedes the earlier segments' records for those steps: the newest value of a step is the run's,
as TensorBoard shows it. The resume point is the `start` record's step when the loop wrote one,
else the last checkpoint saved before the segment's first step.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from core.errors import DataError

METRICS = "metrics.jsonl"
LOGGED = ("train", "eval", "tasks", "save", "end")  # records of steps a segment trained
STEP_EVENTS = LOGGED + ("start",)


def metrics_path(workdir: str) -> str:
  return os.path.join(workdir, METRICS)


def load(workdir: str, require_metrics: bool = True) -> list[dict[str, Any]]:
  """The records of WORKDIR/metrics.jsonl. A last line cut short (a crash while writing) is
  dropped; any other unreadable line, a missing file or (with require_metrics) a log without a
  train or eval record is refused in one line."""
  path = metrics_path(workdir)
  if not os.path.exists(workdir):
    raise DataError(f"{workdir} does not exist; pass a run's --workdir")
  if not os.path.isdir(workdir):
    raise DataError(f"{workdir} is a file, not a run directory; pass a run's --workdir")
  if not os.path.isfile(path):
    raise DataError(f"{workdir} has no {METRICS}; pass the --workdir of a pregate-train run")
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    record = _parse(line)
    if record is None and i == len(lines) - 1:
      break
    if not isinstance(record, dict):
      raise DataError(f"{path} line {i + 1} is not a JSON object; fix or remove that line")
    records.append(record)
  if require_metrics and not any(r.get("event") in ("train", "eval") for r in records):
    raise DataError(f"{path} has no train or eval records yet; plot it after the first "
                    f"log step (logging.log_every)")
  return records


def _parse(line: str) -> Any:
  """A line's JSON value. A process killed mid-write leaves half a record that the next run's
  first record is appended to on the same line: that line yields the complete record at its end
  (the longest tail starting at a '{' that parses as a record)."""
  try:
    return json.loads(line)
  except ValueError:
    pass
  for i in range(len(line) - 1, 0, -1):
    if line[i] == "{":
      try:
        tail = json.loads(line[i:])
      except ValueError:
        continue
      return tail if isinstance(tail, dict) and "event" in tail else None
  return None


def task_scores(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """A `tasks` record's scores by task: {'smoke': {'acc': .., 'acc_norm': .., 'chance': ..,
  'n': .., ...}} from its flat 'NAME/METRIC' keys (flat, so TensorBoard shows each as a
  scalar `tasks/NAME/METRIC`)."""
  out: dict[str, dict[str, Any]] = {}
  for key, value in record.items():
    name, sep, metric = key.rpartition("/")
    if sep and name:
      out.setdefault(name, {})[metric] = value
  return out


def segments(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
  """The records split per process run: a new segment at each `gate` record."""
  out: list[list[dict[str, Any]]] = []
  for r in records:
    if r.get("event") == "gate" or not out:
      out.append([])
    out[-1].append(r)
  return out


def _steps(seg: list[dict[str, Any]], events: tuple[str, ...] = STEP_EVENTS) -> list[int]:
  return [r["step"] for r in seg if r.get("event") in events and "step" in r]


def resume_step(before: list[dict[str, Any]], seg: list[dict[str, Any]]) -> int | None:
  """The step `seg` started from, or None when it logged no step (it died before its first)."""
  start = [r["step"] for r in seg if r.get("event") == "start" and "step" in r]
  if start:
    return start[0]
  steps = _steps(seg, LOGGED)
  if not steps:
    return None
  saved = [r["step"] for r in before if r.get("event") == "save" and r["step"] < min(steps)]
  return max(saved) if saved else 0


@dataclasses.dataclass
class Run:
  """A run's effective history: each (event, step) once, newest segment wins."""

  name: str
  records: list[dict[str, Any]]
  gate: dict[str, Any] | None
  resumes: list[int]  # steps later segments resumed from
  termination: str | None  # the last segment's end record, None if it never ended (crash)
  last_step: int
  rollbacks: list[int] = dataclasses.field(default_factory=list)  # steps a rollback went on from

  def events(self, kind: str) -> list[dict[str, Any]]:
    return [r for r in self.records if r.get("event") == kind]

  def tokens_per_step(self) -> int | None:
    """Tokens per optimizer step from the gate verdict (global batch x sequence length)."""
    return (self.gate or {}).get("tokens_per_step")

  def tokens(self, record: dict[str, Any]) -> float | None:
    if "tokens_seen" in record:
      return record["tokens_seen"]
    per_step = self.tokens_per_step()
    return None if per_step is None else record["step"] * per_step


def effective(records: list[dict[str, Any]], name: str = "") -> Run:
  """The run's history with superseded records (steps a later segment re-did) dropped."""
  kept: list[dict[str, Any]] = []
  resumes: list[int] = []
  rollbacks: list[int] = []
  gate = None
  for i, seg in enumerate(segments(records)):
    resume = resume_step(kept, seg)
    if i > 0 and resume is not None:
      first = min(_steps(seg, LOGGED), default=resume + 1)
      cut = min(resume + 1, first)
      kept = [r for r in kept if "step" not in r or r["step"] < cut
              or r.get("event") not in STEP_EVENTS]
      resumes.append(resume)
    for record in seg:  # a rollback re-does the steps after the one it goes on from
      if record.get("event") == "rollback":
        kept = [r for r in kept if "step" not in r or r["step"] <= record["step"]
                or r.get("event") not in STEP_EVENTS]
        rollbacks.append(record["step"])
      kept.append(record)
    gate = next((r for r in seg if r.get("event") == "gate"), gate)
  ends = [r for r in segments(records)[-1] if r.get("event") == "end"]
  steps = _steps(kept)
  return Run(name=name, records=kept, gate=gate, resumes=resumes,
             termination=ends[-1].get("termination") if ends else None,
             last_step=max(steps) if steps else 0, rollbacks=rollbacks)
