"""`pregate-stamp PATH --config=configs/x.py [--config.f=v] [--step=N|latest]
[--tokenizer=char|byte] [--corpus=FILE]`: write verified pregate metadata for a checkpoint that
has none or has wrong metadata (`train.ckpt.stamp`)."""
from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from core import cli
from train.data.tokenizer import KINDS

FLAGS = flags.FLAGS


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "The experiment config the checkpoint was "
                                  "trained with (plus the same --config.* overrides).",
                                  lock_config=True)
  flags.DEFINE_string("step", None, "latest | N (default latest, or the step dir's).")
  flags.DEFINE_enum("tokenizer", None, list(KINDS), "Tokenizer kind (default: config's).")
  flags.DEFINE_string("corpus", None, "Corpus for the char tokenizer (default: config's).")


def main(argv: list[str]) -> None:
  from train.ckpt.stamp import stamp
  print("\n".join(stamp(argv[0], FLAGS.config, FLAGS.step, FLAGS.tokenizer, FLAGS.corpus)))


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags, positional=("path",))


if __name__ == "__main__":
  run()
