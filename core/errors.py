"""Typed errors shared by every layer, so callers and tests can tell failures apart.

Every command prints a `PregateError` as one line (`core.cli.fail`) and exits with its
`exit_code`; anything else is a crash (exit 1, traceback).
"""

EXIT_BAD_INPUT = 2  # a config, flag, data or checkpoint that cannot be used
EXIT_GATE = 3  # a guardrail refused the run
EXIT_GUARD = 4  # a run guard stopped a started run; the last good checkpoint is intact
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early on purpose or by a signal; re-run to resume
EXIT_HUNG = 76  # the watchdog saw no step complete in time; re-run to resume (resume is exact)
# pregate-ship's verdicts besides GO (0): every check ran, and one warned or one failed.
EXIT_SHIP_WARN = 10  # WARN: shippable with a caveat a person must read (e.g. a bypassed gate)
EXIT_SHIP_NO_GO = 11  # NO-GO: a check failed; the row names it


class PregateError(Exception):
  """Base: a refusal or bad input that is reported as one line, never a traceback."""

  exit_code = EXIT_BAD_INPUT


class ConfigError(PregateError):
  """A config field, flag or combination that cannot run."""


class DataError(PregateError):
  """A corpus, prepared shard or manifest that cannot be used."""


class CheckpointError(PregateError):
  """A checkpoint directory that cannot be read or written as asked."""


class GateRefusal(PregateError):
  """A guardrail refused the run; distinct exit status from bad input and crashes."""

  exit_code = EXIT_GATE


class RunGuardError(PregateError):
  """A guard stopped a run that had started; nothing poisoned or partial was saved."""

  exit_code = EXIT_GUARD


class NonFiniteLossError(RunGuardError):
  """The loss or gradient norm became NaN/Inf; the poisoned state is not saved."""


class DiskSpaceError(RunGuardError):
  """Not enough free disk for the next checkpoint; earlier checkpoints are untouched."""


class ContractError(PregateError):
  """A guardrail contract (gates/contracts/*.yaml) that is missing or malformed; no gate can
  decide without its rule."""
