"""`pregate-prepare --input=FILE --output_dir=DIR [--tokenizer=char|byte]`: tokenize a corpus
once into train/val token arrays plus a manifest (`train.data.prepare`)."""
from __future__ import annotations

from absl import flags

from core import cli
from train.data import prepare
from train.data.tokenizer import KINDS

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("input", None, "UTF-8 text corpus to tokenize.")
  flags.DEFINE_string("output_dir", None, "Directory (or gs://, s3:// URL) to write into.")
  flags.DEFINE_enum("tokenizer", "char", list(KINDS), "Tokenizer kind.")
  flags.DEFINE_float("val_fraction", 0.1, "Fraction of tokens (the tail) held out for val.")
  flags.mark_flags_as_required(["input", "output_dir"])


def main(argv: list[str]) -> None:
  del argv
  manifest = prepare.prepare(FLAGS.input, FLAGS.output_dir, FLAGS.tokenizer, FLAGS.val_fraction)
  print(prepare.summary(manifest, FLAGS.output_dir))


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
