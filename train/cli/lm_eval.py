"""`pregate-lm-eval --model pregate --model_args checkpoint=W[,step=N,batch_size=B] --tasks T
[any lm-eval flag] [--include_path_only]`: lm-evaluation-harness's own command line, with
pregate checkpoints registered as the model `pregate` (train/infer/lm_eval_model.py).

`--include_path_only` (pregate's own flag, taken out before the harness parses the rest) indexes
only the tasks under --include_path: the harness otherwise scans its thousands of built-in task
files on every start (~20 s on a CPU core).

Needs the `eval` extra (pip install 'pregate[eval]'); a pregate refusal (a bad checkpoint, a
missing tokenizer) is one `ERROR:` line with its exit code, as every pregate command prints it.
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from core import cli
from core.errors import ConfigError, PregateError


def _take_flag(name: str) -> bool:
  """Whether pregate's own boolean flag `name` was given (removed from sys.argv)."""
  found = name in sys.argv
  sys.argv[:] = [a for a in sys.argv if a != name]
  return found


def _index_include_path_only() -> None:
  """The harness's task manager without its built-in tasks (the CLI builds it by name)."""
  import lm_eval.tasks

  class IncludePathOnly(lm_eval.tasks.TaskManager):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **{**kwargs, "include_defaults": False})

  lm_eval.tasks.TaskManager = IncludePathOnly


def _one_line(parser: argparse.ArgumentParser, message: str) -> NoReturn:
  """A bad or stray flag as one `ERROR: ConfigError:` line, exit 2 (argparse prints usage)."""
  del parser
  stray = "unrecognized arguments: "
  if message.startswith(stray):
    message = f"unexpected arguments {message[len(stray):].split()}"
  cli.fail(ConfigError(f"{message}; pregate-lm-eval run --help lists lm-eval's flags"))


def run() -> None:
  """Console-script entry point: the harness's `cli_evaluate` with `pregate` registered."""
  try:
    from lm_eval.__main__ import cli_evaluate

    import train.infer.lm_eval_model  # noqa: F401  (registers the `pregate` model)
  except ImportError as e:
    cli.fail(ConfigError(f"pregate-lm-eval needs lm-evaluation-harness: pip install "
                         f"'pregate[eval]' ({e})"))
  verbose, local_only = (_take_flag(f) for f in ("--verbose", "--include_path_only"))
  if local_only:
    _index_include_path_only()
  argparse.ArgumentParser.error = _one_line  # the harness's flag errors, as pregate's
  try:
    cli_evaluate()
  except PregateError as e:
    cli.fail(e, verbose=verbose)


if __name__ == "__main__":
  run()
