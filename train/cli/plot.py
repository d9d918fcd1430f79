"""`pregate-plot WORKDIR [WORKDIR ...] [--out=DIR]`: PNG figures of runs from metrics.jsonl.

One workdir writes WORKDIR/plots/ by default; several are overlaid on the same figures, written
to ./pregate-plots/ unless --out says where. Works while a run is going, after it finished,
was preempted, resumed or crashed; a path without metrics is refused in one line.
"""
from __future__ import annotations

import os

from absl import flags

from core import cli
from core.errors import ConfigError

FLAGS = flags.FLAGS
COMPARE_DIR = "pregate-plots"


def out_dir(workdirs: list[str], out: str | None) -> str:
  if out:
    return out
  return os.path.join(workdirs[0], "plots") if len(workdirs) == 1 else COMPARE_DIR


def _define_flags() -> None:
  flags.DEFINE_string("out", None, "Directory for the PNGs (default: WORKDIR/plots for one "
                      "run, ./pregate-plots for several).")


def main(workdirs: list[str]) -> None:
  from train.report import plot  # matplotlib only once the arguments are sane
  try:
    paths = plot.write_plots(workdirs, out_dir(workdirs, FLAGS.out))
  except OSError as e:  # e.g. an unwritable --out
    raise ConfigError(f"cannot write the figures ({e}); pass a writable --out=DIR") from None
  for path in paths:
    print(path)


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags, positional=("workdir...",),
                  usage="pregate-plot WORKDIR [WORKDIR ...] [--out=DIR]")


if __name__ == "__main__":
  run()
