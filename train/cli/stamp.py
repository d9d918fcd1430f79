"""`pregate-stamp PATH --config=configs/x.py [--config.f=v] [--step=N|latest]
[--tokenizer=char|byte] [--corpus=FILE] [--heldout=FILE] [--expect_loss=L]`: write verified
pregate metadata for a checkpoint that has none or has wrong metadata (`train.ckpt.stamp`).

The stamp proves itself before writing: shapes against the stored tensors, then the claimed
config's loss on held-out text (not near ln V, near --expect_loss when given, no same-shape
alternative clearly better); the record carries the functional fingerprint of what it proved."""
from __future__ import annotations

from absl import flags

from core import cli
from train.cli import define_config_flag
from train.data.tokenizer import KINDS

FLAGS = flags.FLAGS


def _define_flags() -> None:
  define_config_flag("The experiment config the checkpoint was trained with (plus the same "
                     "--config.* overrides).")
  flags.DEFINE_string("step", None, "latest | N (default latest, or the step dir's).")
  flags.DEFINE_enum("tokenizer", None, list(KINDS), "Tokenizer kind (default: config's).")
  flags.DEFINE_string("corpus", None, "Corpus for the char tokenizer (default: config's).")
  flags.DEFINE_string("heldout", None, "A UTF-8 text file the checkpoint never trained on, to "
                      "prove the claimed architecture (default: the validation split of the "
                      "corpus, the text the training run held out).")
  flags.DEFINE_float("expect_loss", None, "The loss the checkpoint is known to reach (e.g. its "
                     "last logged val loss); the held-out loss must be within --loss_tolerance "
                     "of it.")
  flags.DEFINE_float("loss_tolerance", 0.05, "Relative tolerance for --expect_loss.")
  flags.DEFINE_bool("check_alternatives", True, "Also score the same-shape alternatives (other "
                    "head splits, common rope_theta values) and refuse when one is clearly "
                    "better (one small compile each).")


def main(argv: list[str]) -> None:
  from train.ckpt.stamp import stamp
  print("\n".join(stamp(argv[0], FLAGS.config, FLAGS.step, FLAGS.tokenizer, FLAGS.corpus,
                        FLAGS.heldout, FLAGS.expect_loss, FLAGS.loss_tolerance,
                        FLAGS.check_alternatives)))


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags, positional=("path",))


if __name__ == "__main__":
  run()
