"""The one harness every pregate command runs under.

Same behaviour for every command: flags are defined only when the command starts (importing a
command module defines none), a bad flag or config override is one line, stray positional
arguments are refused, library INFO chatter is dropped, and a `PregateError` is printed as
`ERROR: <Type>: <message>` with the error's exit code (`--verbose` adds the traceback).
"""
from __future__ import annotations

import logging as py_logging
import sys
import traceback
from typing import Callable, NoReturn, Sequence

from absl import app, flags
from absl import logging as absl_logging

from core.errors import ConfigError, PregateError

FLAGS = flags.FLAGS
Main = Callable[[list[str]], int | None]


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
    return FLAGS(argv)
  except flags.Error as e:
    print(f"ERROR: FlagError: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections wraps a KeyError (whose str() is a repr) in an AttributeError: unwrap it.
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    msg = " ".join(str(e.args[0] if e.args else e).split())
    print(f"ERROR: ConfigError: bad --config override: {msg}. Check the field name and type "
          f"against the config file (pregate-train --helpfull lists every field)", file=sys.stderr)
    sys.exit(2)


class _QuietLibraries:
  """Drop INFO chatter from orbax/grain/tensorstore (they log every save step by step)."""

  _NOISY = ("/orbax/", "/grain/", "/etils/", "/jax/_src/")

  def filter(self, record: py_logging.LogRecord) -> bool:
    if "did not provide metrics" in str(record.msg):  # Saves without a val loss (bench).
      return False
    return record.levelno >= 30 or not any(p in record.pathname for p in self._NOISY)


def quiet_libraries() -> None:
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  py_logging.getLogger("absl").addFilter(_QuietLibraries())


def define_checkpoint_flags() -> None:
  """--checkpoint and --step, shared by the commands that read one checkpoint."""
  flags.DEFINE_string("checkpoint", None, "A run's workdir or its checkpoints/ directory.")
  flags.DEFINE_string("step", "latest", "Checkpoint step: latest, best or a number.")
  flags.mark_flag_as_required("checkpoint")


def run_command(main: Main, define_flags: Callable[[], None], *,
                positional: Sequence[str] = (), usage: str = "",
                quiet_error: Callable[[PregateError], bool] = lambda e: False) -> None:
  """Define the command's flags, parse them, and run `main(positional_args)`.

  `positional` names the positional arguments the command takes (exactly those; a last name
  ending in "..." takes one or more); main returns an exit code (None = 0). `quiet_error(e)`
  silences an error's line (e.g. a gate refusal on every process but the first of a
  multi-process job; all still exit with its code).
  """
  define_flags()
  if "verbose" not in FLAGS:
    flags.DEFINE_bool("verbose", False, "Print tracebacks for pregate errors too.")

  def _main(argv: list[str]) -> None:
    args = list(argv[1:])
    varargs = bool(positional) and positional[-1].endswith("...")
    want = " ".join(p.upper() for p in positional) or "no positional arguments"
    if len(args) < len(positional):
      fail(ConfigError(f"missing {want}; usage: {usage or 'see --help'}"))
    if len(args) > len(positional) and not varargs:
      fail(ConfigError(f"unexpected arguments {args}; this command takes {want} and --flags"))
    quiet_libraries()
    try:
      code = main(args)
    except PregateError as e:
      fail(e, verbose=FLAGS.verbose, quiet=quiet_error(e))
    sys.exit(code or 0)

  app.run(_main, flags_parser=parse_flags)
