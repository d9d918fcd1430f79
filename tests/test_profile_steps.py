"""`--profile_steps=A:B` on the training command: a bad window, or a second different one given
with --config.logging.profile_steps, is one ERROR line (exit 2) before anything compiles or is
written. The trace a good window writes, and TensorBoard's profile plugin listing it, are
tests/test_tensorboard.py::test_profile_steps_write_a_trace_the_profile_plugin_lists."""
from __future__ import annotations

import pytest

import helpers

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("args, needles", [
    (["--profile_steps=5:2"], ["logging.profile_steps='5:2'", "1 <= A <= B <= train_steps=4"]),
    (["--profile_steps=x"], ["logging.profile_steps='x'", "must be A:B"]),
    (["--profile_steps=3:9"], ["logging.profile_steps='3:9'", "train_steps=4"]),
    (["--profile_steps=2:3", "--config.logging.profile_steps=3:4"],
     ["--profile_steps=2:3", "--config.logging.profile_steps=3:4", "pass one"]),
])
def test_a_bad_profile_window_is_one_line_before_anything_runs(prepared_data, tmp_path, args,
                                                               needles):
  work = tmp_path / "run"
  res = helpers.run_main(helpers.FORCE, *helpers.tiny_flags(
      prepared_data, {"train_steps": 4, "schedule.warmup_steps": 1}), *args, workdir=work)
  helpers.assert_one_line_error(res, *needles)
  assert not work.exists()
