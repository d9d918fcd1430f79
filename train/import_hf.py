"""`pregate-import --hf_dir=DIR --out=W [--tokenizer=char|byte --corpus=FILE]`: a Hugging Face
Llama/Qwen2 directory as a pregate checkpoint (W/checkpoints/STEP), stamped with its
architecture and tokenizer and validated, usable by `train.evaluate`, `train.sample`,
`train.inspect` and `train.main --init=W`. Anything pregate cannot represent exactly is refused
with one line naming the field (train/hf/importer.py).
"""
from __future__ import annotations

from absl import app, flags

from gates.errors import PregateError
from train import cli
from train.hf import importer


def _tokenizer(kind: str | None, corpus: str | None):
  """The tokenizer to embed when the directory has no tokenizer.json pregate can read."""
  if not kind:
    return None
  from train import prepare_data
  from train.tokenizer import build_tokenizer
  text = prepare_data.read_corpus(corpus)[0] if kind == "char" and corpus else ""
  return build_tokenizer(kind, text)


def main(argv: list[str]) -> None:
  f = cli.start(argv)
  try:
    lines = importer.import_hf(f.hf_dir, f.out, _tokenizer(f.tokenizer, f.corpus))
  except PregateError as e:
    cli.fail(e)
  print("\n".join(lines), flush=True)


def _define_flags() -> None:
  """Defined only when run as a script, so importing this module adds no global flags."""
  flags.DEFINE_string("hf_dir", None, "Hugging Face model directory (config.json + "
                      "safetensors).")
  flags.DEFINE_string("out", None, "New pregate checkpoint directory (never overwritten).")
  flags.mark_flags_as_required(["hf_dir", "out"])
  flags.DEFINE_enum("tokenizer", None, ["char", "byte"], "Embed this pregate tokenizer instead "
                    "of reading the directory's tokenizer.json (for a directory without one).")
  flags.DEFINE_string("corpus", None, "Corpus the char tokenizer was built from.")


def run() -> None:
  """Console-script entry point."""
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
