"""PNG figures of one or several runs from their metrics.jsonl alone (matplotlib, Agg; no server).

Every figure overlays the runs given, one colour each: train loss (line) and val loss (dashed,
one dot per evaluation) against steps and against tokens, learning rate, gradient norm, parameter
and update norm (when the run logged them), tokens/s and MFU. Resume points are dotted vertical
lines, the end of a run that did not complete is a cross with its termination, and each run's
legend entry names its Chinchilla gate verdict. A run that scored tasks (eval.tasks) gets a
panel of their accuracy with each task's chance level.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from train.report.records import Run, effective, load, task_scores

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
DPI = 80


def _series(run: Run, kind: str, key: str, x: str = "step") -> tuple[list, list]:
  """(xs, ys) of `key` over the `kind` records that carry it; x is 'step' or 'tokens'."""
  xs, ys = [], []
  for r in run.events(kind):
    if r.get(key) is None:
      continue
    pos = r["step"] if x == "step" else run.tokens(r)
    if pos is not None:
      xs.append(pos)
      ys.append(r[key])
  return xs, ys


def gate_text(gate: dict[str, Any] | None) -> str:
  if not gate:
    return "gate: not recorded"
  tokens = gate.get("effective_tokens") or gate["tokens"]  # D' under contract v1.2
  ratio = tokens / max(gate["n_params"], 1)
  name = "D'/N" if gate.get("effective_tokens") else "D/N"
  verdict = "passed" if gate.get("passed") else ("BYPASSED" if gate.get("bypassed") else "refused")
  return (f"{gate.get('zone', '?')}, {name} {ratio:.1f} (floor {gate.get('floor_ratio', '?')}): "
          f"{verdict}")


def _label(run: Run, several: bool) -> str:
  end = run.termination or "no end record"
  return f"{run.name} [{end}; {gate_text(run.gate)}]" if several else f"{run.name} [{end}]"


def _mark_run(ax, run: Run, color: str, x: str, last_y: float | None) -> None:
  """Resume points (dotted lines), rollbacks (dash-dot, to the step the run went on from) and a
  cross where a run stopped short of completing."""
  per_step = run.tokens_per_step() if x == "tokens" else 1
  if per_step is None:
    return
  for step in run.resumes:
    ax.axvline(step * per_step, color=color, linestyle=":", linewidth=1.2, alpha=0.8)
  for step in run.rollbacks:
    ax.axvline(step * per_step, color=color, linestyle="-.", linewidth=1.2, alpha=0.8)
    ax.annotate("rollback", (step * per_step, 1.0), xycoords=("data", "axes fraction"),
                textcoords="offset points", xytext=(3, -10), fontsize=7, color=color)
  if run.termination != "COMPLETED" and last_y is not None:
    ax.plot([run.last_step * per_step], [last_y], marker="x", markersize=9, color=color)
    ax.annotate(run.termination or "crashed?", (run.last_step * per_step, last_y),
                textcoords="offset points", xytext=(4, 6), fontsize=7, color=color)


def _loss(ax, runs: list[Run], x: str) -> None:
  for i, run in enumerate(runs):
    c = _COLORS[i % len(_COLORS)]
    xs, ys = _series(run, "train", "loss", x)
    ax.plot(xs, ys, color=c, linewidth=1.3)
    vx, vy = _series(run, "eval", "val_loss", x)
    ax.plot(vx, vy, color=c, linestyle="--", marker="o", markersize=3.5, linewidth=1)
    _mark_run(ax, run, c, x, ys[-1] if ys else (vy[-1] if vy else None))
  ax.set_ylabel("loss (nats/token)")
  ax.set_xlabel("step" if x == "step" else "tokens")
  ax.set_title(f"loss vs {'steps' if x == 'step' else 'tokens'}")
  if len(runs) == 1:
    ax.text(0.99, 0.98, "gate: " + gate_text(runs[0].gate), transform=ax.transAxes,
            ha="right", va="top", fontsize=7, bbox={"boxstyle": "round", "fc": "w", "alpha": .8})


def _metric(key: str, title: str, ylabel: str, scale: float = 1.0, log: bool = False
            ) -> Callable[[Any, list[Run]], None]:
  def draw(ax, runs: list[Run]) -> None:
    for i, run in enumerate(runs):
      c = _COLORS[i % len(_COLORS)]
      xs, ys = _series(run, "train", key)
      ys = [y * scale for y in ys]
      ax.plot(xs, ys, color=c, linewidth=1.2, marker="." if len(xs) < 30 else None)
      _mark_run(ax, run, c, "step", ys[-1] if ys else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log:
      ax.set_yscale("log")
  return draw


def _norms(ax, runs: list[Run]) -> None:
  for i, run in enumerate(runs):
    c = _COLORS[i % len(_COLORS)]
    for key, style in (("param_norm", "-"), ("update_norm", "--")):
      xs, ys = _series(run, "train", key)
      ax.plot(xs, ys, color=c, linestyle=style, linewidth=1.2)
    _mark_run(ax, run, c, "step", None)
  ax.set_title("parameter norm (solid), update norm (dashed)")
  ax.set_xlabel("step")
  ax.set_yscale("log")


def _task_series(run: Run) -> dict[str, tuple[list, list, float | None]]:
  """{task: (steps, accuracies, chance)} of a run's `tasks` records."""
  out: dict[str, tuple[list, list, float | None]] = {}
  for r in run.events("tasks"):
    for name, m in task_scores(r).items():
      xs, ys, _ = out.setdefault(name, ([], [], m.get("chance")))
      if m.get("acc") is not None:
        xs.append(r["step"])
        ys.append(m["acc"])
  return out


def _tasks(ax, runs: list[Run]) -> None:
  styles = ("-", "--", "-.", ":")
  for i, run in enumerate(runs):
    c = _COLORS[i % len(_COLORS)]
    for j, (name, (xs, ys, chance)) in enumerate(sorted(_task_series(run).items())):
      ax.plot(xs, ys, color=c, linestyle=styles[j % len(styles)], marker="o", markersize=3.5,
              linewidth=1.2, label=name)
      if chance is not None:
        ax.axhline(chance, color=c, linestyle=":", linewidth=0.8, alpha=0.6)
      if ys:
        ax.annotate(f"{name} {ys[-1]:.2f}", (xs[-1], ys[-1]), textcoords="offset points",
                    xytext=(-4, 6), ha="right", fontsize=7, color=c)
  ax.set_title("task accuracy (dotted: chance)")
  ax.set_xlabel("step")
  ax.set_ylabel("accuracy")
  ax.set_ylim(0.0, 1.0)


PANELS: dict[str, Callable[[Any, list[Run]], None]] = {
    "loss_vs_steps": lambda ax, runs: _loss(ax, runs, "step"),
    "loss_vs_tokens": lambda ax, runs: _loss(ax, runs, "tokens"),
    "lr": _metric("lr", "learning rate", "lr"),
    "grad_norm": _metric("grad_norm", "gradient norm (before clipping)", "global L2 norm",
                         log=True),
    "norms": _norms,
    "tokens_per_s": _metric("tokens_per_s", "throughput", "tokens/s"),
    "mfu": _metric("mfu", "model FLOPs utilization", "MFU (%)", scale=100.0),
    "tasks": _tasks,
}


def _legend_handles(runs: list[Run]) -> list[Line2D]:
  """One entry per run (colour, termination, gate verdict), then the marks' meaning."""
  several = len(runs) > 1
  handles = [Line2D([], [], color=_COLORS[i % len(_COLORS)], label=_label(run, several))
             for i, run in enumerate(runs)]
  key = [("-", None, "train loss"), ("--", "o", "val loss (one dot per evaluation)"),
         (":", None, "resumed from a checkpoint here"),
         ("-.", None, "rolled back; went on from here"), ("", "x", "where a run stopped short")]
  return handles + [Line2D([], [], color="black", linestyle=ls, marker=m, label=text)
                    for ls, m, text in key]


def _has(runs: list[Run], panel: str) -> bool:
  if panel == "tasks":
    return any(r.events("tasks") for r in runs)
  return panel != "norms" or any(_series(r, "train", "param_norm")[0] for r in runs)


def run_names(workdirs: list[str]) -> list[str]:
  """Each workdir's last path component, or as many components as make the names distinct."""
  parts = [os.path.abspath(w).rstrip(os.sep).split(os.sep) for w in workdirs]
  for depth in range(1, max(len(p) for p in parts) + 1):
    names = [os.sep.join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return [os.path.abspath(w) for w in workdirs]


def load_runs(workdirs: list[str]) -> list[Run]:
  return [effective(load(w), name) for w, name in zip(workdirs, run_names(workdirs))]


def write_plots(workdirs: list[str], out_dir: str) -> list[str]:
  """overview.png (every panel) plus one PNG per panel under out_dir; returns the paths."""
  runs = load_runs(workdirs)
  os.makedirs(out_dir, exist_ok=True)
  panels = [p for p in PANELS if _has(runs, p)]
  written = []
  cols = 4 if len(panels) > 6 else 3
  rows = -(-len(panels) // cols)
  fig = Figure(figsize=(5 * cols, 3.8 * rows), dpi=DPI, layout="constrained")
  fig.suptitle(" vs ".join(r.name for r in runs), fontsize=10)
  for ax, name in zip(fig.subplots(rows, cols, squeeze=False).flat, panels):
    PANELS[name](ax, runs)
    ax.grid(alpha=0.3)
  for ax in list(fig.axes)[len(panels):]:
    ax.set_visible(False)
  handles = _legend_handles(runs)
  fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
             fontsize=8)
  written.append(_save(fig, out_dir, "overview"))
  for name in panels:
    fig = Figure(figsize=(7, 4.5), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    PANELS[name](ax, runs)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=6, loc="best")
    written.append(_save(fig, out_dir, name))
  return written


def _save(fig: Figure, out_dir: str, name: str) -> str:
  """Written to a temporary name and renamed, so a reader never sees half a PNG."""
  path = os.path.join(out_dir, f"{name}.png")
  tmp = path + ".tmp"
  fig.savefig(tmp, format="png")
  os.replace(tmp, path)
  return path
