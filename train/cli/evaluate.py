"""`pregate-eval --checkpoint=PATH [--step=] [--data=FILE] [--batches=N]`: a checkpoint's loss,
perplexity and bits per token/unit.

By default the checkpoint's own recorded eval batches are redrawn from the run's val split, so
the loss must equal the `val_loss` stored with it: a mismatch means the restore, the data or the
model code changed. `--data=FILE` instead scores every token of a text file, in non-overlapping
windows of the trained sequence length, with the checkpoint's embedded tokenizer.
"""
from __future__ import annotations

import json

from absl import flags

from core import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
  cli.define_checkpoint_flags()
  flags.DEFINE_string("data", "", "A UTF-8 text file to score instead of the recorded eval "
                      "batches (every token, in non-overlapping windows).")
  flags.DEFINE_integer("batches", 0, "Batches to score; 0 = the recorded count (which "
                       "reproduces val_loss) or, with --data, the whole file.")


def main(argv: list[str]) -> None:
  del argv
  from train.infer import score
  result = score.evaluate_checkpoint(FLAGS.checkpoint, FLAGS.step, FLAGS.data or None,
                                     FLAGS.batches or None)
  print(score.format_table(result))
  print("RESULT " + json.dumps(result, sort_keys=True), flush=True)


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
