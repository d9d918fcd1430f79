"""`pregate-plot WORKDIR [WORKDIR ...] [--out=DIR]`: PNG figures of runs from metrics.jsonl.

One workdir writes WORKDIR/plots/ by default; several are overlaid on the same figures, written
to ./pregate-plots/ unless --out says where. Works while a run is going, after it finished,
was preempted, resumed or crashed; a path without metrics is refused in one line.
"""
from __future__ import annotations

import os

from absl import app, flags

from gates.errors import ConfigError, PregateError
from train import cli

COMPARE_DIR = "pregate-plots"


def out_dir(workdirs: list[str], out: str | None) -> str:
  if out:
    return out
  return os.path.join(workdirs[0], "plots") if len(workdirs) == 1 else COMPARE_DIR


def main(argv: list[str]) -> None:
  workdirs = argv[1:]
  try:
    if not workdirs:
      raise ConfigError("no run given; pass one or more workdirs: pregate-plot WORKDIR "
                        "[WORKDIR ...] [--out=DIR]")
    from train.report import plot  # matplotlib only once the arguments are sane
    paths = plot.write_plots(workdirs, out_dir(workdirs, flags.FLAGS.out))
  except PregateError as e:
    cli.fail(e)
  except OSError as e:  # e.g. an unwritable --out
    cli.fail(ConfigError(f"cannot write the figures ({e}); pass a writable --out=DIR"))
  for path in paths:
    print(path)


def _define_flags() -> None:
  flags.DEFINE_string("out", None, "Directory for the PNGs (default: WORKDIR/plots for one "
                      "run, ./pregate-plots for several).")


def run() -> None:
  """Console-script entry point."""
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
