"""`pregate-export --checkpoint=W [--step=latest|best|N] --out=DIR [--dtype=float32|bfloat16]`:
a validated checkpoint as a Hugging Face directory that `transformers` loads
(`AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(DIR)`), with a model card.
See train/hf/export.py for what is written and why.
"""
from __future__ import annotations

from absl import flags

from core import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
  from train.hf import export as export_lib
  cli.define_checkpoint_flags()
  flags.DEFINE_string("out", None, "New directory to write (never overwritten).")
  flags.mark_flag_as_required("out")
  flags.DEFINE_enum("dtype", "float32", list(export_lib.DTYPES), "Weight dtype to write.")
  flags.DEFINE_float("max_shard_mb", export_lib.DEFAULT_MAX_SHARD_BYTES / 2**20,
                     "Split model.safetensors into shards of at most this many MiB (with "
                     "model.safetensors.index.json).")
  flags.DEFINE_bool("allow_incomplete_card", False, "Export a checkpoint that lacks model-card "
                    "facts (gate verdict, tokens seen, val loss, data fingerprint, ...), "
                    "stating them as unknown.")


def main(argv: list[str]) -> None:
  del argv
  from train.hf import export as export_lib
  lines = export_lib.export(FLAGS.checkpoint, FLAGS.out, step=FLAGS.step, dtype=FLAGS.dtype,
                            max_shard_bytes=int(FLAGS.max_shard_mb * 2**20),
                            allow_incomplete_card=FLAGS.allow_incomplete_card)
  print("\n".join(lines), flush=True)


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
