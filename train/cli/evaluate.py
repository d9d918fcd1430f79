"""`pregate-eval --checkpoint=PATH [--step=] [--data=FILE] [--batches=N] [--tasks=A.jsonl,...]`:
a checkpoint's loss, perplexity and bits per token/unit, or its accuracy on task files.

By default the checkpoint's own recorded eval batches are redrawn from the run's val split, so
the loss must equal the `val_loss` stored with it: a mismatch means the restore, the data or the
model code changed. `--data=FILE` instead scores every token of a text file, in non-overlapping
windows of the trained sequence length, with the checkpoint's embedded tokenizer. `--tasks`
scores multiple-choice/cloze JSONL task files by log-likelihood as lm-evaluation-harness does
(train/infer/tasks.py); alone it skips the loss, with --data or --batches it reports both.
"""
from __future__ import annotations

import json

from absl import flags

from core import cli
from core.errors import ConfigError

FLAGS = flags.FLAGS


def _define_flags() -> None:
  cli.define_checkpoint_flags()
  flags.DEFINE_string("data", "", "A UTF-8 text file to score instead of the recorded eval "
                      "batches (every token, in non-overlapping windows).")
  flags.DEFINE_integer("batches", 0, "Batches to score; 0 = the recorded count (which "
                       "reproduces val_loss) or, with --data, the whole file.")
  flags.DEFINE_list("tasks", [], "Comma-separated JSONL task files to score by log-likelihood "
                    "(acc, acc_norm, as lm-evaluation-harness); alone it skips the loss.")
  flags.DEFINE_integer("task_batch_size", 8, "Requests per batch when scoring --tasks.")


def main(argv: list[str]) -> None:
  del argv
  from train.infer import score, tasks
  if FLAGS.task_batch_size < 1:
    raise ConfigError(f"--task_batch_size must be >= 1, got {FLAGS.task_batch_size}")
  task_list = [tasks.load_task(p) for p in FLAGS.tasks]  # a bad file fails before any restore
  result: dict = {}
  if not task_list or FLAGS.data or FLAGS.batches:
    result = score.evaluate_checkpoint(FLAGS.checkpoint, FLAGS.step, FLAGS.data or None,
                                       FLAGS.batches or None)
    print(score.format_table(result))
  if task_list:
    restored, scorer = tasks.restore_scorer(FLAGS.checkpoint, FLAGS.step, FLAGS.task_batch_size)
    scores = tasks.score_tasks(task_list, restored.tokenizer, scorer)
    print(f"tasks of checkpoint step {restored.step}, by log-likelihood (lm-evaluation-harness "
          "conventions)")
    print(tasks.format_scores(scores))
    result.update(step=restored.step, tasks=[s.to_dict() for s in scores])
  print("RESULT " + json.dumps(result, sort_keys=True), flush=True)


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
