"""An over-repeated corpus is refused by the training command before compile, as the gate contract
says."""
import pytest

import helpers

pytestmark = pytest.mark.e2e


def test_over_repeated_refused_before_compile(prepared_data, tmp_path):
  # TINY: N = 11,392, 128 tokens/step; U = 1,003,854 -> the limit is 31,370 steps.
  flags = helpers.tiny_flags(prepared_data, {"train_steps": 40_000})
  workdir = tmp_path / "run"
  res = helpers.run_main(*flags, workdir=workdir, count_compiles=True)
  assert res.rc == 3, res.stderr[-3000:]
  assert res.compiles == 0 and not workdir.exists()
  [line] = res.error_lines
  assert line.startswith("ERROR: ChinchillaGateError:") and "OVER_REPEATED" in line
  assert "train_steps <= 31,370" in line and "5.10 epochs" in line
