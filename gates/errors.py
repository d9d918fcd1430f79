"""Typed errors shared by every layer, so callers and tests can tell failures apart.

`train.main` prints any `PregateError` as one line and exits with its `exit_code`; anything else
is a crash (exit 1, traceback). Exit codes: 2 bad input, 3 refused by a gate.
"""


class PregateError(Exception):
  """Base: a refusal or bad input that is reported as one line, never a traceback."""

  exit_code = 2


class ConfigError(PregateError):
  """A config field, flag or combination that cannot run."""


class DataError(PregateError):
  """A corpus, prepared shard or manifest that cannot be used."""


class GateRefusal(PregateError):
  """A guardrail refused the run; distinct exit status from bad input and crashes."""

  exit_code = 3
