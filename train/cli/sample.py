"""`pregate-sample --checkpoint=PATH --prompt=TEXT [--max_new_tokens=N]`: text from a
checkpoint (KV-cached generation, `train.infer.generate`)."""
from __future__ import annotations

from absl import flags

from core import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
  cli.define_checkpoint_flags()
  flags.DEFINE_string("prompt", "\n", "Text to continue (characters the tokenizer knows).")
  flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate after the prompt.")
  flags.DEFINE_float("temperature", 1.0, "Softmax temperature; 0 = greedy (argmax).")
  flags.DEFINE_integer("top_k", 0, "Sample only from the k most likely tokens; 0 = all.")
  flags.DEFINE_integer("seed", 0, "PRNG seed: the same seed gives the same text.")


def main(argv: list[str]) -> None:
  del argv
  from train.ckpt.restore import load_for_eval
  from train.infer.generate import generate
  restored = load_for_eval(FLAGS.checkpoint, FLAGS.step)
  text = generate(restored.model, restored.tokenizer, FLAGS.prompt, FLAGS.max_new_tokens,
                  FLAGS.temperature, FLAGS.top_k, FLAGS.seed)
  print(FLAGS.prompt + text, flush=True)


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
