"""`pregate-plot` writes valid PNGs for one run and for overlaid runs (preempted and resumed,
crashed and resumed, still crashed), and refuses a path without metrics in one line."""
from __future__ import annotations

import shutil
import struct
import zlib

import pytest

import helpers
import shared_runs
from train.report import records as rec

pytestmark = pytest.mark.e2e


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PANELS = {"overview", "loss_vs_steps", "loss_vs_tokens", "lr", "grad_norm", "tokens_per_s",
          "mfu"}


def _plot(*args: str) -> helpers.Result:
  return helpers.command("train.cli.plot", *args, timeout=180)


def assert_png(path, min_bytes: int = 8_000, min_size: tuple[int, int] = (300, 200)) -> None:
  """A complete PNG (signature, IHDR, every chunk's CRC, IEND) of at least the given size, with
  enough bytes that it holds drawn curves rather than an empty frame."""
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC, path
  pos, chunks = 8, []
  while pos < len(data):
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
    (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
    assert zlib.crc32(kind + body) == crc, (path, kind)
    chunks.append((kind, body))
    pos += 12 + length
  assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", path
  width, height = struct.unpack(">II", chunks[0][1][:8])
  assert width >= min_size[0] and height >= min_size[1], (path, width, height)
  assert len(data) >= min_bytes, (path, len(data))


def test_one_run_default_out_dir(preempted, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(preempted, workdir, ignore=shutil.ignore_patterns("checkpoints", "data"))
  res = _plot(str(workdir))
  assert res.rc == 0, res.stderr[-3000:]
  written = [line for line in res.stdout.splitlines() if line.endswith(".png")]
  assert {p.split("/")[-1][:-4] for p in written} >= PANELS
  for path in written:
    assert path.startswith(str(workdir / "plots"))
    assert_png(workdir / "plots" / path.split("/")[-1])
  assert_png(workdir / "plots" / "overview.png", min_bytes=40_000, min_size=(1000, 500))


def test_two_runs_overlaid(preempted, crashed, tmp_path):
  out = tmp_path / "compare"
  res = _plot(str(preempted), str(crashed), f"--out={out}")
  assert res.rc == 0, res.stderr[-3000:]
  for name in PANELS:
    assert_png(out / f"{name}.png")


def test_crashed_run_without_end_record(crashed, tmp_path):
  """A run killed after logging step 25 (metrics.jsonl cut mid-line), never resumed."""
  workdir = tmp_path / "dead"
  workdir.mkdir()
  lines = (crashed / "metrics.jsonl").read_text().splitlines()
  gates = [i for i, line in enumerate(lines) if '"event": "gate"' in line]
  (workdir / "metrics.jsonl").write_text("\n".join(lines[:gates[1]]) + "\n" + lines[gates[1]][:40])
  run = rec.effective(rec.load(str(workdir)))
  assert run.termination is None and run.last_step == shared_runs.CRASH_AFTER
  res = _plot(str(workdir), f"--out={tmp_path / 'out'}")
  assert res.rc == 0, res.stderr[-3000:]
  assert_png(tmp_path / "out" / "loss_vs_tokens.png")


def test_resume_points_and_superseded_steps(preempted, crashed):
  p = rec.effective(rec.load(str(preempted)))
  assert p.resumes == [10] and p.termination == "COMPLETED" and p.last_step == shared_runs.STEPS
  assert [r["step"] for r in p.events("train")] == [10, 20, 30]
  c = rec.effective(rec.load(str(crashed)))
  assert c.resumes == [shared_runs.CRASH_CKPT]
  assert [r["step"] for r in c.events("train")] == [5, 10, 15, 20, 25, 30]
  assert c.tokens(c.events("train")[-1]) == shared_runs.STEPS * 4 * 32


@pytest.mark.parametrize("make, needle", [
    (lambda d: None, "does not exist"),
    (lambda d: d.write_text("x"), "is a file"),
    (lambda d: d.mkdir(), "has no metrics.jsonl"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"event": "gate"}\n')),
     "no train or eval records"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n'
                                                             'garbage\n{"event": "eval"}\n')),
     "line 2"),
])
def test_bad_input_is_one_line(tmp_path, make, needle):
  target = tmp_path / "run"
  make(target)
  res = _plot(str(target))
  helpers.assert_one_line_error(res, "DataError", needle)
  assert not (target / "plots").exists()


def test_unwritable_out_is_one_line(preempted, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  res = _plot(str(preempted), f"--out={blocker}/plots")
  helpers.assert_one_line_error(res, "ConfigError", "writable --out")


def test_no_workdir_is_one_line():
  helpers.assert_one_line_error(_plot(), "ConfigError", "pregate-plot WORKDIR")
