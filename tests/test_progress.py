"""Progress on long non-loop work: checkpoint verification (pregate-inspect) and the weight
writing of pregate-export report how far they are; plain log lines off a terminal, a tqdm bar
with rate and ETA on one."""
from __future__ import annotations

import io

import pytest

import helpers
import hf_helpers as hh


def test_bar_without_tokens_shows_bytes_rate_and_eta(caplog):
  from core.progress import Progress
  tty = helpers.Tty()
  bar = Progress("verifying", 8_000_000, stream=tty, every_s=0.0)
  bar.update(2_000_000)
  bar.close()
  assert "verifying" in tty.getvalue() and "2.00M/8.00M" in tty.getvalue()
  quiet = Progress("verifying", 8_000_000, stream=io.StringIO(), every_s=3600.0)
  with caplog.at_level("INFO"):
    quiet.update(2_000_000)
    quiet.close()
    assert not caplog.records  # shorter than every_s: silent (one-line errors stay one line)
    plain = Progress("verifying", 8_000_000, stream=io.StringIO(), every_s=0.0)
    plain.update(2_000_000)
    plain.update(2_000_000)
    plain.close()  # a log that showed progress also shows the end
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0].startswith("verifying: 25% (2.0 of 8.0 MB), ") and "MB/s, ETA" in lines[0]
  assert len(lines) == 3 and lines[2].startswith("verifying: 50% (4.0 of 8.0 MB)")


def test_inspect_verification_and_export_report_progress(tmp_path, caplog, monkeypatch):
  """Off a terminal each step logs its lines (every update here: EVERY_S = 0) and its final
  one: every stored byte accounted for."""
  pytest.importorskip("safetensors")
  from core import progress
  monkeypatch.setattr(progress, "EVERY_S", 0.0)
  from train.ckpt.checkpointer import Checkpointer
  from train.hf.export import export
  cfg = hh.model_config("llama", False)
  ckpt = hh.make_checkpoint(tmp_path / "run", cfg)
  nbytes = sum(a.nbytes for a in hh.random_params(cfg).values())
  with caplog.at_level("INFO"):
    c = Checkpointer(str(ckpt / "checkpoints"), read_only=True)
    try:
      assert c.verify_arrays(c.resolve("latest")) == nbytes
    finally:
      c.close()
    export(str(ckpt), str(tmp_path / "hf"), max_shard_bytes=nbytes // 3)
  lines = [r.getMessage() for r in caplog.records]
  mb = f"{nbytes / 1e6:,.1f} MB"
  assert any(m.startswith("verifying ") and f"100% ({mb[:-3]} of {mb})" in m for m in lines), lines
  assert any(m.startswith(f"writing weights: 100% ({mb[:-3]} of {mb})") for m in lines), lines
