"""`pregate-plan`: the planner of `gates.plan`, with `--measure` wired to the train stack.

gates/ decides from plain data and may not import train/, so the command lives here and hands
`gates.plan.main` the function that times the real step (`train.run.measure.plan_lines`).
Without --measure nothing from the train stack is imported and nothing compiles.
"""
from __future__ import annotations

import os
import tempfile

from absl import flags
from ml_collections import ConfigDict

from core import cli
from gates import plan

FLAGS = flags.FLAGS


def _measure(config: ConfigDict) -> list[str]:
  """Do the run's start-up work before timing, so start-up is measured over the same work:
  the run's imports and preflight (on a throwaway workdir), then the re-exec under the malloc
  tunable, after which `train.main` imports and preflights again (nothing is printed yet)."""
  from train.cli import main as _run_command  # noqa: F401  (the run's imports)
  from train.run.preflight import preflight
  from train.runtime import host_memory
  with tempfile.TemporaryDirectory(prefix="pregate-measure-") as tmp:
    preflight(config, os.path.join(tmp, "run"), FLAGS.force_under_provisioned)
  host_memory.reexec_with_tunables()
  from train.run import measure
  return measure.plan_lines(config)


def _teacher(spec: str) -> dict:
  """A distillation teacher's model config, from its checkpoint's files (nothing compiles)."""
  from train.run import teacher
  return teacher.model_config(spec)


def main(argv: list[str]) -> int:
  return plan.main(argv, measure=_measure, teacher=_teacher)


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, plan._define_flags)  # pylint: disable=protected-access


if __name__ == "__main__":
  run()
