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

import helpers

STEPS = 30
MAX_SEQ_LEN = 32  # a short context, so sampling past it is cheap to test
OVERRIDES = {"train_steps": STEPS, "model.max_seq_len": MAX_SEQ_LEN}
CRASH_AFTER, CRASH_CKPT = 25, 20


def _flags(data_dir: str, **over) -> list[str]:
  return [*helpers.tiny_flags(data_dir, {**OVERRIDES, **over}), helpers.FORCE]


def _ok(res: helpers.Result, rc: int = 0) -> None:
  assert res.rc == rc, res.stderr[-3000:]


def _once(root: Path, name: str, make) -> Path:
  """root/name made by make(workdir) unless an earlier test of this session made it."""
  workdir = root / name
  done = root / f"{name}.done"
  if not done.exists():
    if workdir.exists():
      shutil.rmtree(workdir)
    make(workdir)
    done.touch()
  return workdir


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


def preempted(data_dir: str, tmp_path_factory) -> Path:
  return _once(tmp_path_factory.getbasetemp(), "watch_preempted",
               lambda w: _preempted(data_dir, w))


def crashed(data_dir: str, tmp_path_factory) -> Path:
  return _once(tmp_path_factory.getbasetemp(), "watch_crashed", lambda w: _crashed(data_dir, w))
