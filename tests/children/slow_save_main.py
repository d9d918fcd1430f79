"""Child: `python -m train.main ARGS` whose checkpoint saves announce themselves and linger,
so a test can land a signal while a (multi-process) save is under way:
  PREGATE_TEST_SAVE_MARK=P   each save first creates the file P.<process index>
  PREGATE_TEST_SAVE_SLEEP=S  then sleeps S seconds inside the save
"""
import os
import pathlib
import sys
import time

from train.cli import main
from train.run.loop import Seams


def _slow_save(step: int) -> None:
  import jax
  mark = os.environ.get("PREGATE_TEST_SAVE_MARK")
  if mark:
    pathlib.Path(f"{mark}.{jax.process_index()}").write_text(str(step))
  time.sleep(float(os.environ.get("PREGATE_TEST_SAVE_SLEEP", 0)))


sys.argv = ["train.main"] + sys.argv[1:]
main.run(Seams(checkpoint_fault=_slow_save))
