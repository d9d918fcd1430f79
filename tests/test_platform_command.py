"""The training command refuses an execution setting this platform cannot run (cudnn attention on a
CPU host) in one line, before the data is prepared."""
from __future__ import annotations

import pytest

import helpers
from train.runtime import platform

pytestmark = pytest.mark.e2e

def test_train_main_refuses_cudnn_on_cpu_in_one_line(tmp_path):
  """The command a user runs: exit 2, one line naming the fix, no workdir (before: the data
  was prepared, then the compile died with a traceback and exit 1)."""
  if platform.planned() == "gpu":
    pytest.skip("cuDNN may run on this host")
  workdir = tmp_path / "run"
  res = helpers.run_main(*helpers.tiny_flags(None, {"model.attention": "cudnn"}),
                         helpers.FORCE, workdir=workdir)
  helpers.assert_one_line_error(res, "PlatformConfigError", "set model.attention=auto")
  assert not workdir.exists()
