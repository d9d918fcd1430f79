"""What every pregate command shares: one-line errors and flag parsing without tracebacks."""
from __future__ import annotations

import sys
import traceback
from typing import NoReturn

from absl import flags


def fail(err: BaseException, *, verbose: bool = False, quiet: bool = False) -> NoReturn:
  """`ERROR: <Type>: message` on one line and the error's exit code (2 unless it names one).
  verbose adds the traceback; quiet prints nothing (a non-primary process of a job)."""
  if verbose:
    traceback.print_exception(err)
  if not quiet:
    print(f"ERROR: {type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr,
          flush=True)
  sys.exit(getattr(err, "exit_code", 2))


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with config-override mistakes (a misspelled field raises AttributeError from
  deep in ml_collections) turned into one-line errors instead of tracebacks."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"ERROR: flags: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections wraps a KeyError (whose str() is a repr) in an AttributeError: unwrap it.
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    msg = " ".join(str(e.args[0] if e.args else e).split())
    print(f"ERROR: ConfigError: bad --config override: {msg}. Check the field name and type "
          f"against the config file (configs/base.py declares every field)", file=sys.stderr)
    sys.exit(2)


def step_arg(value: str) -> str | int:
  """'latest' | 'best' | N from a flag string."""
  return int(value) if value.strip().isdigit() else value.strip()


def define_checkpoint_flags() -> None:
  """--checkpoint and --step, shared by the commands that read one checkpoint."""
  flags.DEFINE_string("checkpoint", None, "A run's workdir or its checkpoints/ directory.")
  flags.DEFINE_string("step", "latest", "Checkpoint step: latest, best or a number.")
  flags.mark_flag_as_required("checkpoint")


def start(argv: list[str]) -> flags.FlagValues:
  """Common start of a `--flags`-only command: refuse stray arguments, quiet library logs."""
  from gates.errors import ConfigError
  from train.metrics_log import quiet_libraries
  if len(argv) > 1:
    fail(ConfigError(f"unexpected arguments {argv[1:]}; pass only --flags"))
  quiet_libraries()
  return flags.FLAGS
