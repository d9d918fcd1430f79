"""`pregate-prepare --input=FILES --output_dir=DIR [--tokenizer=char|byte|bpe]`: tokenize a corpus
once into train/val token arrays, document offsets and a manifest (`train.data.prepare`).

--input takes files, directories and globs, comma-separated (.txt, .jsonl, .jsonl.gz,
.jsonl.zst, .parquet). --tokenizer=bpe trains a byte-level BPE of --bpe_vocab_size ids on the
training documents, or with --tokenizer_json=PATH uses that tokenizer.json as is.
"""
from __future__ import annotations

import codecs

from absl import flags

from core import cli
from core.errors import DataError

FLAGS = flags.FLAGS


def _define_flags() -> None:
  from train.data import spec
  from train.data.inputs import FORMATS
  from train.data.tokenizer import KINDS
  d = spec.DataSpec()
  flags.DEFINE_string("input", None, "Files, directories or globs, comma-separated.")
  flags.DEFINE_string("output_dir", None, "Directory (or gs://, s3:// URL) to write into.")
  flags.DEFINE_enum("tokenizer", "char", list(KINDS), "Tokenizer kind.")
  flags.DEFINE_string("tokenizer_json", "", "bpe: an existing tokenizer.json, used as is.")
  flags.DEFINE_integer("bpe_vocab_size", 0, "bpe training: vocabulary size incl. specials.")
  flags.DEFINE_string("special_tokens", "", "bpe training: extra special tokens (a,b).")
  flags.DEFINE_string("eot_token", d.eot_token, "End-of-text token appended after every "
                      "document; '' = none (char/byte only).")
  flags.DEFINE_enum("format", "auto", list(FORMATS), "Input format (auto: by extension).")
  flags.DEFINE_string("text_field", d.text_field, "JSONL field / Parquet column of the text.")
  flags.DEFINE_string("txt_separator", "", r"Text between documents in .txt files, with "
                      r"escapes (e.g. '\n\n'); '' = one document per file.")
  flags.DEFINE_float("val_fraction", d.val_fraction, "Fraction held out for validation.")
  flags.DEFINE_enum("val_split", d.val_split, list(spec.VAL_SPLITS), "documents: whole "
                    "documents by content hash; tail: the last tokens (nanoGPT).")
  flags.DEFINE_integer("workers", 0, "Tokenizing processes; 0 = one per CPU core.")
  flags.mark_flags_as_required(["input", "output_dir"])


def main(argv: list[str]) -> None:
  del argv
  from train.data import prepare, spec
  try:
    separator = codecs.decode(FLAGS.txt_separator, "unicode_escape")
  except UnicodeDecodeError as e:
    raise DataError(f"--txt_separator={FLAGS.txt_separator!r} has a bad escape ({e.reason}); "
                    r"write e.g. '\n\n'") from None
  data_spec = spec.DataSpec(
      tokenizer=FLAGS.tokenizer, val_fraction=FLAGS.val_fraction, val_split=FLAGS.val_split,
      eot_token=FLAGS.eot_token, tokenizer_json=FLAGS.tokenizer_json,
      bpe_vocab_size=FLAGS.bpe_vocab_size, special_tokens=FLAGS.special_tokens,
      format=FLAGS.format, text_field=FLAGS.text_field, txt_separator=separator)
  manifest = prepare.prepare(FLAGS.input, FLAGS.output_dir, spec=data_spec,
                             workers=spec.workers(FLAGS.workers))
  print(prepare.summary(manifest, FLAGS.output_dir))


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
