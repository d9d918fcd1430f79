"""Child: `python -m train.main ARGS` with the loop's fault seams driven by the environment
(each a no-op unless set), for failures a test cannot cause from outside:
  PREGATE_TEST_DELAY=S        sleep S seconds after each `train` metrics record
  PREGATE_TEST_ENOSPC_AT=N    every save from step N on fails with ENOSPC
  PREGATE_TEST_DISK_FULL=1    the first save fits, then the disk reports 0 bytes free
  PREGATE_TEST_POISON=A:B     batches A..B (indices) have random targets, every time drawn
  PREGATE_TEST_FLAKY=N[,M]    these batches have random targets the first time this process
                              draws them
  PREGATE_TEST_KILL_ONCE=F    SIGKILL this process when a rollback first replays a step (then
                              create F, so the resumed process is not killed again)
  PREGATE_TEST_HANG_AT=N      process PREGATE_TEST_HANG_PROCESS (default 0) blocks before step N
                              (and, in a multi-process run, stays blocked when its watchdog fires)
"""
import errno
import os
import shutil
import signal
import sys
import threading
import time
import types

import jax
import numpy as np

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


_drawn: set[int] = set()
_top = [0]


def _batch(step: int, index: int, batch: dict) -> dict:
  """Poisoned targets (a loss spike) for the batches the environment names."""
  if step <= _top[0] and env("PREGATE_TEST_KILL_ONCE"):  # a replay: the rollback is under way
    flag = env("PREGATE_TEST_KILL_ONCE")
    if not os.path.exists(flag):
      open(flag, "w").close()
      os.kill(os.getpid(), signal.SIGKILL)
  _top[0] = max(_top[0], step)
  first, _, last = (env("PREGATE_TEST_POISON") or "-1:-2").partition(":")
  flaky = str(index) in (env("PREGATE_TEST_FLAKY") or "").split(",") and index not in _drawn
  _drawn.add(index)
  if int(first) <= index <= int(last) or flaky:
    rng = np.random.default_rng(index)
    batch = {**batch, "targets": rng.integers(0, 65, batch["targets"].shape, np.int32)}
  return batch


def _before_step(step: int) -> None:
  if step == int(env("PREGATE_TEST_HANG_AT", -1)) and \
      jax.process_index() == int(env("PREGATE_TEST_HANG_PROCESS", 0)):
    threading.Event().wait()  # a wedged data worker: never returns


def _watchdog_exit(code: int) -> None:
  """The wedged process stays wedged (it could not exit either), so the test sees process 0
  name it before anything else ends the job; every other process exits as a run does."""
  if env("PREGATE_TEST_HANG_AT") and \
      jax.process_index() == int(env("PREGATE_TEST_HANG_PROCESS", 0)) and jax.process_count() > 1:
    threading.Event().wait()
  os._exit(code)


sys.argv = ["train.main"] + sys.argv[1:]
main.run(Seams(disk_usage=_disk_usage, checkpoint_fault=_checkpoint_fault,
               after_record=_after_record, batch=_batch, before_step=_before_step,
               watchdog_exit=_watchdog_exit))
