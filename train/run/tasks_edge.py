"""Tasks scored in the loop (eval.tasks): judge the model, not only its loss.

The smoke task (`smoke`: which of four continuations follows a validation passage,
train/data/smoke_task.py) is built from the run's own validation split and written to
WORKDIR/tasks/smoke.jsonl, its sha256 in a `task_files` record (its choices continue the
context directly: its file records delimiter ''); JSONL task files (the format of
train/infer/tasks.py, delimiter ' ' unless a file says otherwise) are read as they are. At
each evaluation (or every eval.tasks_every steps) every task is scored on the run's own
parameters, in their training layout, on the run's mesh, and one `tasks` record holds each
task's accuracy with its chance level (`NAME/acc`, ...: scalars `tasks/NAME/acc` in
TensorBoard) and the seconds scoring took. Early stopping may watch a task's accuracy instead
of the val loss (eval.early_stop_metric=task:NAME:acc); on resume its patience count is
replayed from the run's `tasks` records up to the resumed step, so a resumed run stops where
an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any

from absl import logging

from core.errors import DataError
from core.paths import resolve_path
from gates import config_sanity
from train.data import smoke_task
from train.data.pipeline import TokenSet
from train.data.tokenizer import Tokenizer
from train.infer import tasks as tasks_lib
from train.report import records
from train.run.edges import EvalTracker, is_due

SMOKE = config_sanity.SMOKE
MAX_VAL_READ = 1 << 22  # validation tokens read per source to build the smoke task
METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance", "n")


def smoke_path(workdir: str) -> str:
  return os.path.join(workdir, "tasks", f"{SMOKE}.jsonl")


def load_smoke(path: str) -> tasks_lib.Task:
  """A written smoke task (its file records its delimiter '': the choices continue the
  context directly, so `pregate-eval --tasks` and lm-eval read it the same way)."""
  return tasks_lib.load_task(path, SMOKE)


def build_smoke(val: TokenSet, tokenizer: Tokenizer, max_seq_len: int) -> tasks_lib.Task:
  """The smoke task of a validation split (the first MAX_VAL_READ tokens of each source)."""
  arrays = getattr(val, "arrays", [val])
  streams = [a.read(0, min(len(a), MAX_VAL_READ)) for a in arrays]
  items = smoke_task.build(streams, tokenizer.decode, max_seq_len, tokenizer.eos_id)
  return tasks_lib.Task(SMOKE, tuple(tasks_lib.Item(c, ch, g) for c, ch, g in items),
                        smoke_task.DELIMITER)


def write_task(path: str, task: tasks_lib.Task) -> str:
  """Write the task file whole or not at all (a temporary name, then one rename); -> its
  sha256."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    tasks_lib.write_task(tmp, task.items, task.delimiter)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return file_sha256(path)


def file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def check_paths(spec: str) -> None:
  """Preflight: every task file of eval.tasks exists and parses (one DataError line naming
  the file, the line and the fix), before anything compiles."""
  for name, path in config_sanity.task_names(spec):
    if path != SMOKE:
      try:
        tasks_lib.load_task(resolve_path(path), name)
      except DataError as e:
        raise DataError(f"eval.tasks={spec!r}: {e}") from None


def load_tasks(spec: str, smoke: Any) -> list[tasks_lib.Task]:
  """eval.tasks' tasks, in order; `smoke()` builds the smoke task when it is named."""
  return [smoke() if path == SMOKE else tasks_lib.load_task(resolve_path(path), name)
          for name, path in config_sanity.task_names(spec)]


def scores_record(step: int, scores: list[tasks_lib.TaskScore], seconds: float
                  ) -> dict[str, Any]:
  """The `tasks` record: flat NAME/METRIC keys, so every figure is a TensorBoard scalar."""
  flat = {f"{s.name}/{k}": s.to_dict()[k] for s in scores for k in METRICS}
  return {"event": "tasks", "step": step, **flat, "seconds": seconds}


class TaskEdge:
  """The run's tasks, their scoring edge and, when early stopping watches a task, its tracker.
  Built (files read, the smoke task drawn) before the run claims its workdir, so a task that
  cannot be built refuses the run with nothing written; `publish` writes the smoke task once
  the run has started. With no tasks configured every method is a no-op."""

  def __init__(self, config: Any, val: TokenSet, tokenizer: Tokenizer, max_seq_len: int,
               workdir: str):
    ev, b = config.eval, config.batch
    self.every, self.seconds, self.workdir = ev.tasks_every, 0.0, workdir
    self.max_seq_len = max_seq_len
    self.named = config_sanity.task_names(ev.tasks)
    self.tasks = load_tasks(ev.tasks, lambda: build_smoke(val, tokenizer, max_seq_len))
    self.requests = [tasks_lib.requests(t, tokenizer) for t in self.tasks]
    self.microbatch = b.global_batch // b.grad_accum  # the training microbatch fits in memory
    self.watch = config_sanity.early_stop_metric(ev.early_stop_metric, ev.tasks)
    self.tracker = None if self.watch is None else EvalTracker(ev.early_stop_patience,
                                                               ev.early_stop_min_delta)

  def publish(self, start: int, is_main: bool) -> dict[str, Any] | None:
    """Once the run has started at step `start`: write the smoke task (process 0), replay
    the watched task's earlier scores, and -> the `task_files` record (each task's file,
    sha256, item count and chance), None without tasks."""
    if not self.tasks:
      return None
    files: dict[str, Any] = {}
    for task, (name, path) in zip(self.tasks, self.named):
      where = smoke_path(self.workdir) if path == SMOKE else resolve_path(path)
      sha = None
      if is_main:
        sha = write_task(where, task) if path == SMOKE else file_sha256(where)
      files[name] = {"path": where, "sha256": sha, "items": len(task.items),
                     "chance": task.chance}
    for r in _earlier(self.workdir, start):
      self._track(r)
    return {"event": "task_files", "step": start, **files}

  def due(self, step: int, is_eval: bool, last: int) -> bool:
    if not self.tasks:
      return False
    return is_eval if self.every == 0 else is_due(step, self.every, last)

  def score(self, step: int, params: Any, rs: Any) -> dict[str, Any]:
    """Score every task on `params` (the training state's, in its layout, on the mesh of the
    run's set-up `rs`); -> the `tasks` record. Counts the seconds it took."""
    t = time.perf_counter()
    ways = int(rs.mesh.shape["data"] * rs.mesh.shape["fsdp"])
    loglik = tasks_lib.make_loglik(rs.state.graphdef, params, self.max_seq_len,
                                   max(ways, self.microbatch // ways * ways), rs.mesh)
    scores = [tasks_lib.score_logliks(task, loglik(reqs))
              for task, reqs in zip(self.tasks, self.requests)]
    seconds = time.perf_counter() - t
    self.seconds += seconds
    record = scores_record(step, scores, seconds)
    self._track(record)
    logging.info("tasks step %d: %s (%.1fs)", step, "; ".join(
        f"{s.name} acc {s.acc:.3f} ± {s.acc_stderr:.3f} (chance {s.chance:.2f})"
        for s in scores), seconds)
    return record

  def _track(self, record: dict[str, Any]) -> None:
    if self.tracker is not None:
      name, metric = self.watch
      value = record.get(f"{name}/{metric}")
      if value is None:
        raise DataError(f"early stopping watches task {name!r}, which the run's tasks record "
                        f"at step {record.get('step')} lacks; set eval.early_stop_metric")
      self.tracker.update(-float(value))  # the tracker minimises: accuracy, negated

  def early_stop(self, val_loss_says: bool, scored: bool) -> bool:
    """Whether the run stops early now: the val-loss tracker's word, or, when early stopping
    watches a task, its tracker's right after that task was scored."""
    if self.tracker is None:
      return val_loss_says
    return scored and self.tracker.should_stop


def _earlier(workdir: str, start: int) -> list[dict[str, Any]]:
  """The run's `tasks` records up to the step it resumes from (none for a fresh run)."""
  if not start or not os.path.isfile(records.metrics_path(workdir)):
    return []
  run = records.effective(records.load(workdir, require_metrics=False))
  return [r for r in run.events("tasks") if r["step"] <= start]
