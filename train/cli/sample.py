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
  flags.DEFINE_integer("num_samples", 1, "Independent samples of the same prompt, drawn in one "
                       "batch and printed one after another.")
  flags.DEFINE_integer("window_shift", 1, "Past max_seq_len the window over the last "
                       "max_seq_len tokens is re-run every this many tokens: 1 = exact sliding "
                       "window (nanoGPT), larger = faster, each token then sees between "
                       "max_seq_len - shift + 1 and max_seq_len tokens.")


def main(argv: list[str]) -> None:
  del argv
  from train.ckpt.restore import load_for_eval
  from train.infer.generate import SEPARATOR, generate_samples
  restored = load_for_eval(FLAGS.checkpoint, FLAGS.step)
  texts = generate_samples(restored.model, restored.tokenizer, FLAGS.prompt,
                           FLAGS.max_new_tokens, FLAGS.temperature, FLAGS.top_k, FLAGS.seed,
                           FLAGS.num_samples, FLAGS.window_shift)
  print(SEPARATOR.join(FLAGS.prompt + text for text in texts), flush=True)


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
