"""Child: `python -m train.main ARGS` with the loop's fault seams driven by the environment
(each a no-op unless set), for failures a test cannot cause from outside:
  PREGATE_TEST_DELAY=S        sleep S seconds after each `train` metrics record
  PREGATE_TEST_ENOSPC_AT=N    every save from step N on fails with ENOSPC
  PREGATE_TEST_DISK_FULL=1    the first save fits, then the disk reports 0 bytes free
"""
import errno
import os
import shutil
import sys
import time
import types

from train.cli import main
from train.run.loop import Seams

env = os.environ.get
_calls = []


def _after_record(record: dict) -> None:
  if record["event"] == "train":
    time.sleep(float(env("PREGATE_TEST_DELAY", 0)))


def _checkpoint_fault(step: int) -> None:
  if step >= int(env("PREGATE_TEST_ENOSPC_AT", 1 << 30)):
    raise OSError(errno.ENOSPC, "No space left on device")


def _disk_usage(path: str):
  _calls.append(shutil.disk_usage(path))
  full = env("PREGATE_TEST_DISK_FULL") and len(_calls) > 1
  return types.SimpleNamespace(free=0) if full else _calls[-1]


sys.argv = ["train.main"] + sys.argv[1:]
main.run(Seams(disk_usage=_disk_usage, checkpoint_fault=_checkpoint_fault,
               after_record=_after_record))
