"""Config sanity: every reason a config cannot run, found before anything is built or written.

Pure: takes the plain config dict, returns the problems (each naming the field and the fix);
`check` raises them all at once as one ConfigError. Every field's rule (type and range or
choices) is its declaration (gates/config_schema.py), so a wrong type, NaN, an empty string, a
negative or a huge value is refused here, before the workdir is touched, instead of crashing (or
claiming the workdir) later. Cross-field rules (relations, not declarations) follow.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from core.config_fields import Field, build
from core.errors import ConfigError
from gates.config_schema import FIELDS as DECLARED
from gates.config_schema import Batch, Eval, Schedule
from gates.ownership import flatten

# A mapping field (data.sources) is checked by whoever reads it (the data spec).
FIELDS: dict[str, Field] = {f.path: f for f in DECLARED if f.type != "mapping"}
MAX_STEP_TOKENS = 2**27  # global_batch x seq_len; and the eval set's tokens
_MISSING = object()


def _fix(path: str) -> str:
  return f" (--config.{path}; pregate-train --helpfull documents it)"


def problems(cfg: Mapping[str, Any]) -> list[str]:
  """All problems of a config dict (the layout of configs/base.py): each field's rule first,
  then, once every field is valid, the rules that tie fields together."""
  flat = flatten(cfg)
  out = []
  for path, rule in FIELDS.items():
    value = flat.get(path, _MISSING)
    if value is _MISSING:
      out.append(f"{path} is missing from the config; declare it as configs/base.py does")
      continue
    found = rule.problem(value)
    if found:
      out.append(found + _fix(path))
  return out or _cross(cfg)


def _cross(cfg: Mapping[str, Any]) -> list[str]:
  out: list[str] = []
  # Typed views of the sections these relations read (every field is valid by now; a key a
  # config file added is not judged here); the model section stays a dict: its own relations
  # are ModelConfig's, judged after these.
  batch: Batch = build(Batch, cfg["batch"], strict=False)
  sched: Schedule = build(Schedule, cfg["schedule"], strict=False)
  ev: Eval = build(Eval, cfg["eval"], strict=False)
  max_seq_len = cfg["model"]["max_seq_len"]
  if batch.global_batch % batch.grad_accum:
    out.append(f"batch.global_batch={batch.global_batch} is not divisible by "
               f"batch.grad_accum={batch.grad_accum}")
  if batch.seq_len > max_seq_len:
    out.append(f"batch.seq_len={batch.seq_len} exceeds model.max_seq_len="
               f"{max_seq_len}; lower seq_len or raise max_seq_len")
  if batch.global_batch * batch.seq_len > MAX_STEP_TOKENS:
    out.append(f"batch.global_batch x batch.seq_len = {batch.global_batch * batch.seq_len:,}"
               f" tokens per step exceeds {MAX_STEP_TOKENS:,}; lower one of them")
  eval_tokens = ev.eval_batches * (ev.batch_size or batch.global_batch) * batch.seq_len
  if eval_tokens > MAX_STEP_TOKENS:
    out.append(f"eval.eval_batches x eval batch x seq_len = {eval_tokens:,} tokens exceeds "
               f"{MAX_STEP_TOKENS:,} (they are held in memory); lower eval.eval_batches")
  if sched.warmup_steps > cfg["train_steps"]:
    out.append(f"schedule.warmup_steps={sched.warmup_steps} must lie in "
               f"[0, train_steps={cfg['train_steps']}]")
  data = cfg["data"]
  if data.get("document_positions") and data.get("document_masking") is False:
    out.append("data.document_positions=True restarts positions at documents that "
               "data.document_masking=False lets attend to each other; set both True, or "
               "document_positions=None")
  for check in (lambda: profile_window(cfg["logging"]["profile_steps"], cfg["train_steps"]),
                lambda: batch_windows(data.get("skip_batches", "")),
                lambda: task_names(ev.tasks),
                lambda: early_stop_metric(ev.early_stop_metric, ev.tasks)):
    try:
      check()
    except ValueError as e:
      out.append(str(e))
  return out


def batch_windows(spec: str) -> list[tuple[int, int]]:
  """data.skip_batches 'A:B,C:D' -> [(A, B), (C, D)], inclusive batch-index windows, sorted;
  '' -> []. ValueError (naming the field and the fix) for anything else."""
  out = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    first, _, last = part.partition(":")
    if not (first.strip().isdigit() and last.strip().isdigit() and int(first) <= int(last)):
      raise ValueError(f"data.skip_batches={spec!r} must be comma-separated A:B windows of "
                       f"batch indices with 0 <= A <= B, e.g. '1200:1499'")
    out.append((int(first), int(last)))
  return sorted(out)


def profile_window(spec: str, train_steps: int) -> tuple[int, int] | None:
  """logging.profile_steps 'A:B' -> (A, B), the steps a trace covers; '' -> None. ValueError
  (naming the field and the fix) unless 1 <= A <= B <= train_steps."""
  if not spec:
    return None
  first, _, last = spec.partition(":")
  if not (first.strip().isdigit() and last.strip().isdigit()
          and 1 <= int(first) <= int(last) <= train_steps):
    raise ValueError(f"logging.profile_steps={spec!r} must be A:B with 1 <= A <= B <= "
                     f"train_steps={train_steps}, e.g. 10:12 (or '' for no trace)")
  return int(first), int(last)


SMOKE = "smoke"  # eval.tasks' name for the smoke task built from the validation split
TASK_METRICS = ("acc", "acc_norm")


def task_names(spec: str) -> list[tuple[str, str]]:
  """eval.tasks 'smoke,dir/x.jsonl' -> [('smoke', 'smoke'), ('x', 'dir/x.jsonl')]: each task's
  name (a file's name without .jsonl) and its path. ValueError for two tasks of one name."""
  out: list[tuple[str, str]] = []
  for path in filter(None, (p.strip() for p in spec.split(","))):
    name = re.split(r"[\\/]", path)[-1].removesuffix(".jsonl")
    if name in [n for n, _ in out]:
      raise ValueError(f"eval.tasks={spec!r} names two tasks {name!r}; rename one file")
    if name == SMOKE and path != SMOKE:
      raise ValueError(f"eval.tasks={spec!r}: the name {SMOKE!r} is the smoke task built from "
                       f"the validation split; rename the file {path!r}")
    out.append((name, path))
  return out


def early_stop_metric(metric: str, tasks: str) -> tuple[str, str] | None:
  """eval.early_stop_metric -> None for 'val_loss', (task name, metric) for 'task:NAME:METRIC'.
  ValueError (naming the field and the fix) for anything else or a task eval.tasks lacks."""
  if metric == "val_loss":
    return None
  kind, _, rest = metric.partition(":")
  name, _, which = rest.rpartition(":")
  names = [n for n, _ in task_names(tasks)]
  if kind != "task" or which not in TASK_METRICS or name not in names:
    raise ValueError(f"eval.early_stop_metric={metric!r} must be val_loss or task:NAME:acc | "
                     f"task:NAME:acc_norm with NAME one of eval.tasks' names {names}")
  return name, which


def check(cfg: Mapping[str, Any]) -> None:
  found = problems(cfg)
  if found:
    raise ConfigError("invalid config: " + "; ".join(found))
