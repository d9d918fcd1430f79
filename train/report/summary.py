"""The end-of-run summary: what a practitioner reads first when a run stops.

Built from the run's metrics.jsonl records (its whole history, resumes included) plus what only
the loop knows about this process: its wall-time split and where it wrote things. Figures the
records cannot give are left out rather than guessed.
"""
from __future__ import annotations

import statistics
from typing import Any

from train.report.records import effective, task_scores


def _duration(seconds: float) -> str:
  seconds = max(seconds, 0.0)
  if seconds < 60:
    return f"{seconds:.1f}s"
  m, s = divmod(round(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _tokens(n: float) -> str:
  for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= size:
      return f"{n / size:.2f}{unit}"
  return f"{n:.0f}"


def _loss_line(evals: list[dict[str, Any]]) -> str:
  if not evals:
    return "val loss: not evaluated"
  last = evals[-1]
  best = min(evals, key=lambda r: r["val_loss"])
  bpb = lambda r: f" ({r['val_bpb']:.4f} bpb)" if r.get("val_bpb") is not None else ""
  return (f"val loss: final {last['val_loss']:.4f}{bpb(last)} at step {last['step']}; "
          f"best {best['val_loss']:.4f}{bpb(best)} at step {best['step']}")


def _task_lines(tasks: list[dict[str, Any]]) -> list[str]:
  """The last scoring of each task, its chance level beside it (the cost is in the time
  line)."""
  if not tasks:
    return []
  last = tasks[-1]
  out = []
  for name, m in task_scores(last).items():
    err = f" ± {m['acc_stderr']:.3f}" if m.get("acc_stderr") is not None else ""
    norm = f", acc_norm {m['acc_norm']:.3f}" if m.get("acc_norm") is not None else ""
    out.append(f"task {name}: acc {m.get('acc', float('nan')):.3f}{err}{norm} (chance "
               f"{m.get('chance', float('nan')):.3f}, n={m.get('n', '?')}) at step {last['step']}")
  return out


def _time_line(compile_s: float | None, steps_s: float | None, eval_s: float | None,
               checkpoint_s: float | None, wall_s: float | None,
               tasks_s: float | None = None) -> str | None:
  """This process's wall time split; `steps` defaults to what the other parts leave of wall."""
  parts = {"compile": compile_s, "eval": eval_s, "tasks": tasks_s or None,
           "checkpoint": checkpoint_s}
  if steps_s is None and wall_s is not None:
    steps_s = wall_s - sum(v for v in parts.values() if v is not None)
  parts = {"steps": steps_s, **parts}
  known = {k: v for k, v in parts.items() if v is not None}
  if not known:
    return None
  if wall_s is None or wall_s <= 0:
    return "time (this process): " + ", ".join(f"{k} {_duration(v)}" for k, v in known.items())
  split = ", ".join(f"{k} {_duration(v)} ({100 * v / wall_s:.0f}%)" for k, v in known.items())
  return f"wall time (this process): {_duration(wall_s)} = {split}"


def _guard_lines(train: list[dict[str, Any]], rollbacks: list[dict[str, Any]]) -> list[str]:
  """What the run's guards did: spikes skipped in the step, and every rollback (none: no line)."""
  spikes = train[-1].get("spikes") if train else None
  out = [f"loss spikes skipped in the step: {spikes}"] if spikes else []
  for i, r in enumerate(rollbacks, 1):
    window = r.get("skipped_batches")
    out.append(f"rollback {i}: at step {r['at_step']} to step {r['to_step']} ({r['reason']}); "
               f"{r['verdict']}" + (f", batches {window[0]}..{window[1]} skipped" if window
                                    else ", nothing skipped"))
  return out


def build(records: list[dict[str, Any]], *, termination: str | None = None,
          compile_s: float | None = None, steps_s: float | None = None,
          eval_s: float | None = None, checkpoint_s: float | None = None,
          wall_s: float | None = None, workdir: str | None = None,
          checkpoint_dir: str | None = None, tensorboard_dir: str | None = None,
          plots_dir: str | None = None, tasks_s: float | None = None) -> str:
  """The summary as text lines. `records` is the run's metrics.jsonl; the keyword arguments are
  what the caller measured in this process (None = unknown, left out). Without checkpoint_s,
  the blocking time of this process's saves (its `save` records) is used; without wall_s, the
  `end` record's elapsed_s (+ compile_s); `steps` defaults to what wall time leaves over.
  Without tasks_s, the seconds this process's `tasks` records spent scoring."""
  run = effective(records)
  segment = records[max(i for i, r in enumerate(records) if r.get("event") == "gate"):] \
      if any(r.get("event") == "gate" for r in records) else records
  if checkpoint_s is None:
    saves = [r["blocking_s"] for r in segment if r.get("event") == "save" and "blocking_s" in r]
    checkpoint_s = sum(saves) if saves else None
  if tasks_s is None:
    spent = [r["seconds"] for r in segment if r.get("event") == "tasks" and "seconds" in r]
    tasks_s = sum(spent) if spent else None
  ends = [r for r in segment if r.get("event") == "end" and r.get("elapsed_s") is not None]
  if wall_s is None and ends:  # the loop's own clock starts after compiling
    wall_s = ends[-1]["elapsed_s"] + (compile_s or 0.0)
  termination = termination or run.termination or "no end record (crashed or still running)"
  train = run.events("train")
  lines = [f"run summary: {termination} at step {run.last_step}"
           + (f" of {train[-1]['train_steps']}" if train and "train_steps" in train[-1] else "")
           + (f" (resumed at step {', '.join(map(str, run.resumes))})" if run.resumes else "")]
  lines.append(_loss_line(run.events("eval")))
  lines.extend(_task_lines(run.events("tasks")))
  at_end = train[-1] if train and train[-1]["step"] == run.last_step else {"step": run.last_step}
  tokens = run.tokens(at_end)
  if tokens is not None:
    planned = (run.gate or {}).get("tokens")
    lines.append(f"tokens seen: {_tokens(tokens)}"
                 + (f" of {_tokens(planned)} planned" if planned else ""))
  tps = [r["tokens_per_s"] for r in train if r.get("tokens_per_s") is not None]
  mfu = [r["mfu"] for r in train if r.get("mfu") is not None]
  if tps:
    lines.append(f"throughput: median {statistics.median(tps):,.0f} tokens/s"
                 + (f", median MFU {100 * statistics.median(mfu):.1f}%" if mfu else "")
                 + f" over {len(tps)} log windows")
  lines.extend(_guard_lines(train, [r for r in records if r.get("event") == "rollback"]))
  time_line = _time_line(compile_s, steps_s, eval_s, checkpoint_s, wall_s, tasks_s)
  if time_line:
    lines.append(time_line)
  where = {"checkpoints": checkpoint_dir, "tensorboard": tensorboard_dir, "plots": plots_dir}
  if workdir and not plots_dir:
    where["plots"] = f"run `pregate-plot {workdir}` (writes {workdir}/plots)"
  if tensorboard_dir:
    where["tensorboard"] = (f"{tensorboard_dir} "
                            f"(`tensorboard --logdir {workdir or tensorboard_dir}`)")
  lines.extend(f"{k}: {v}" for k, v in where.items() if v)
  return "\n".join(lines)
