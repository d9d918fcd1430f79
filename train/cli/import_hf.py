"""`pregate-import --hf_dir=DIR --out=W [--tokenizer=char|byte --corpus=FILE]`: a Hugging Face
Llama/Qwen2 directory as a pregate checkpoint (W/checkpoints/STEP), stamped with its
architecture and tokenizer and validated, usable by `pregate-eval`, `pregate-sample`,
`pregate-inspect` and `pregate-train --init=W`. Anything pregate cannot represent exactly is
refused with one line naming the field (train/hf/importer.py).
"""
from __future__ import annotations

from absl import flags

from core import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + "
                      "safetensors).")
  flags.DEFINE_string("out", None, "New pregate checkpoint directory (never overwritten).")
  flags.mark_flags_as_required(["hf_dir", "out"])
  flags.DEFINE_enum("tokenizer", None, ["char", "byte"], "Embed this pregate tokenizer instead "
                    "of reading the directory's tokenizer.json (for a directory without one).")
  flags.DEFINE_string("corpus", None, "Corpus the char tokenizer was built from.")


def _tokenizer(kind: str | None, corpus: str | None):
  """The tokenizer to embed when the directory has no tokenizer.json pregate can read."""
  if not kind:
    return None
  from train.data.prepare import read_corpus
  from train.data.tokenizer import build_tokenizer
  text = read_corpus(corpus)[0] if kind == "char" and corpus else ""
  return build_tokenizer(kind, text)


def main(argv: list[str]) -> None:
  del argv
  from train.hf import importer
  lines = importer.import_hf(FLAGS.hf_dir, FLAGS.out, _tokenizer(FLAGS.tokenizer, FLAGS.corpus))
  print("\n".join(lines), flush=True)


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
