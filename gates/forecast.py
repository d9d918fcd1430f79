"""A run's wall-time forecast from measured unit costs: what `pregate-plan --measure` and the
run's start-up line print.

  wall = startup + compile + steps * step_time + evals * eval_time + saves * save_time

The counts follow the training loop's schedule exactly (train/run/loop.py): an eval every
`eval_every` steps and at the last step; a save every `save_every` steps before the last and
one at the end; a save on a step without an eval evaluates first (every checkpoint records its
val loss), so it also costs an eval. Measuring the unit costs (a few real steps, one eval, one
save) is the caller's job; this is pure arithmetic so the formula can be tested alone.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How many of each costly event a run of `steps` steps performs, from `start` (a resume)."""

  steps: int
  evals: int
  saves: int

  def to_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


def schedule(train_steps: int, eval_every: int, save_every: int, start: int = 0) -> Schedule:
  """Event counts for steps start+1 .. train_steps (the loop's is_eval / save conditions)."""
  for name, value in (("train_steps", train_steps), ("eval_every", eval_every),
                      ("save_every", save_every)):
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if not 0 <= start <= train_steps:
    raise ValueError(f"start must be in [0, train_steps], got {start!r}")
  if start == train_steps:
    return Schedule(0, 0, 0)

  def multiples(k: int, upto: int) -> int:  # multiples of k in (start, upto]
    return upto // k - start // k

  evals = multiples(eval_every, train_steps) + (1 if train_steps % eval_every else 0)
  periodic_saves = multiples(save_every, train_steps - 1)
  # A periodic save at a step that is not an eval step runs one extra eval.
  lcm = math.lcm(eval_every, save_every)
  extra_evals = periodic_saves - multiples(lcm, train_steps - 1)
  return Schedule(steps=train_steps - start, evals=evals + extra_evals, saves=periodic_saves + 1)


@dataclasses.dataclass(frozen=True)
class Forecast:
  """The forecast wall time and its parts, in seconds."""

  schedule: Schedule
  startup_s: float
  compile_s: float
  train_s: float
  eval_s: float
  save_s: float

  @property
  def total_s(self) -> float:
    return self.startup_s + self.compile_s + self.train_s + self.eval_s + self.save_s

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "total_s": self.total_s}

  def line(self) -> str:
    s = self.schedule
    return (f"forecast: {self.total_s:.1f} s = start-up {self.startup_s:.1f} + compile "
            f"{self.compile_s:.1f} + {s.steps:,} steps {self.train_s:.1f} + {s.evals} evals "
            f"{self.eval_s:.1f} + {s.saves} saves {self.save_s:.1f}")


def forecast(sched: Schedule, *, step_s: float, eval_s: float, save_s: float,
             compile_s: float, startup_s: float = 0.0) -> Forecast:
  """Wall time of a run with the given schedule and measured unit costs (seconds each)."""
  for name, value in (("step_s", step_s), ("eval_s", eval_s), ("save_s", save_s),
                      ("compile_s", compile_s), ("startup_s", startup_s)):
    if not value >= 0:
      raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
  return Forecast(schedule=sched, startup_s=startup_s, compile_s=compile_s,
                  train_s=sched.steps * step_s, eval_s=sched.evals * eval_s,
                  save_s=sched.saves * save_s)
