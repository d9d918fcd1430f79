"""Real tiny runs shared by the plot, TensorBoard, run-summary and sample-window tests (made once
per test worker).

`preempted`: stopped by --stop_after_steps at step 10, then resumed to 30 by the same command.
`crashed`: a run that died after logging step 25 with its last checkpoint at 20 (what a killed
process leaves: metrics.jsonl cut mid-line, no checkpoint 30), then resumed by the same command,
which re-does steps 21..30.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from filelock import FileLock

import helpers

STEPS = 30
MAX_SEQ_LEN = 32  # a short context, so sampling past it is cheap to test
OVERRIDES = {"train_steps": STEPS, "model.max_seq_len": MAX_SEQ_LEN}
CRASH_AFTER, CRASH_CKPT = 25, 20


def _flags(data_dir: str, **over) -> list[str]:
  return [*helpers.tiny_flags(data_dir, {**OVERRIDES, **over}), helpers.FORCE]


def _ok(res: helpers.Result, rc: int = 0) -> None:
  assert res.rc == rc, res.stderr[-3000:]


def session_root(tmp_path_factory, worker_id: str) -> Path:
  """A directory every test worker of this pytest run shares (xdist gives each worker its own
  basetemp under one per-run parent), so a run made here is made once per test run."""
  base = tmp_path_factory.getbasetemp()
  return base if worker_id == "master" else base.parent


def once(root: Path, name: str, make) -> Path:
  """root/name made by make(path) unless a test of this run (on any worker) made it; the
  workers wait on one lock, so the first makes it and the rest reuse it."""
  path = root / name
  with FileLock(str(root / f"{name}.lock")):
    if not (root / f"{name}.done").exists():
      if path.exists():
        shutil.rmtree(path)
      make(path)
      (root / f"{name}.done").touch()
  return path


def trained(data_dir: str, workdir: Path, steps: int = 20) -> None:
  """The tiny run (FORCE: below the gate) that restore, fingerprint, architecture and Hugging
  Face tests start from; each module copies it (copy_of) before changing anything. Evaluation,
  sampling and distillation (as the teacher) read it where it is."""
  _ok(helpers.run_main(helpers.FORCE, *helpers.tiny_flags(data_dir, {"train_steps": steps}),
                       workdir=workdir))


def copy_of(run: Path, tmp_path_factory, name: str) -> Path:
  """A private copy of a shared run (root/<name>/run), so a module may change or extend it."""
  return Path(shutil.copytree(run, tmp_path_factory.mktemp(name) / "run"))


def _preempted(data_dir: str, workdir: Path) -> None:
  _ok(helpers.run_main(*_flags(data_dir), "--stop_after_steps=10", workdir=workdir), 75)
  _ok(helpers.run_main(*_flags(data_dir), workdir=workdir))


def _crashed(data_dir: str, workdir: Path) -> None:
  flags = _flags(data_dir, **{"logging.log_every": 5})
  _ok(helpers.run_main(*flags, workdir=workdir))
  metrics = workdir / "metrics.jsonl"
  lines = metrics.read_text().splitlines(keepends=True)
  cut = next(i for i, line in enumerate(lines)
             if '"event": "train"' in line and f'"step": {CRASH_AFTER},' in line)
  metrics.write_text("".join(lines[:cut + 1]) + lines[cut + 1][:17])  # died mid-write
  for step in helpers.checkpoint_steps(workdir):
    if step > CRASH_CKPT:
      shutil.rmtree(workdir / "checkpoints" / str(step))
  _ok(helpers.run_main(*flags, workdir=workdir))


def preempted(data_dir: str, root: Path) -> Path:
  return once(root, "watch_preempted", lambda w: _preempted(data_dir, w))


def crashed(data_dir: str, root: Path) -> Path:
  return once(root, "watch_crashed", lambda w: _crashed(data_dir, w))


# A tiny run that scores the smoke task (eval.tasks=smoke) long enough to write sensible text (a
# 1-layer model at lr 1e-2: val loss ~2.3, non-degenerate samples) and to pass the gate (450
# steps of 512 tokens: D'/N = 20.2), for the task and ship tests.
TASKS = {"train_steps": 450, "batch.global_batch": 16, "model.max_seq_len": 64,
         "optimizer.lr": 1e-2, "schedule.warmup_steps": 20, "eval.eval_every": 100,
         "logging.log_every": 100, "checkpoint.save_every": 300, "eval.tasks": "smoke"}


def _tasks_run(data_dir: str, workdir: Path) -> None:
  res = helpers.run_main(*helpers.tiny_flags(data_dir, TASKS), workdir=workdir)
  _ok(res)
  (workdir / "stdout.txt").write_text(res.stdout)


def tasks_passing(data_dir: str, root: Path) -> Path:
  return once(root, "tasks_passing", lambda w: _tasks_run(data_dir, w))
