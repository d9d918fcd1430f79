"""`--profile_steps=A:B` (or `--config.logging.profile_steps=A:B`): a jax.profiler trace of
steps A to B, written under WORKDIR/profile, where TensorBoard's profile plugin (the `profile`
extra: xprof) lists each capture (`plugins/profile/<time>/<host>.xplane.pb`; `tensorboard
--logdir WORKDIR`, Profile tab, run `profile/<time>`).

Process 0 traces (the processes of a job share the workdir and, on one host, the file name).
A resume inside the window traces its remaining steps.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from core.errors import ConfigError
from gates.config_sanity import profile_window

FIELD = "logging.profile_steps"


def apply_flag(config: Any, flag: str, overrides: Mapping[str, Any]) -> None:
  """--profile_steps=A:B sets config.logging.profile_steps over the config file's value; the
  window is then judged like any config value (profile_window, before anything compiles).
  `overrides` are the command line's --config.FIELD values: a different
  --config.logging.profile_steps beside the flag is refused."""
  other = overrides.get(FIELD)
  if other is not None and other != flag:
    raise ConfigError(f"--profile_steps={flag} and --config.{FIELD}={other} both set the "
                      f"steps to profile; pass one of them")
  config.logging.profile_steps = flag


class StepProfiler:
  """before(step) starts the trace at the window's first step; after(step, state) waits for
  that step's work and stops it at the last; leaving the `with` stops a trace still running."""

  def __init__(self, spec: str, train_steps: int, workdir: str, enabled: bool):
    self.window = profile_window(spec, train_steps) if enabled else None
    self.directory = os.path.join(workdir, "profile")
    self.active = False

  def before(self, step: int) -> None:
    if self.window and not self.active and self.window[0] <= step <= self.window[1]:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, state: Any) -> None:
    if self.active and step >= self.window[1]:
      jax.block_until_ready(state)  # the trace holds the step's device work, not its dispatch
      self._stop()

  def _stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False

  def __enter__(self) -> StepProfiler:
    return self

  def __exit__(self, *_: Any) -> None:
    self._stop()
