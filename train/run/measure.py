"""Measured unit costs of a run on this host, for the wall-time forecast (`gates.forecast`).

`pregate-plan --measure` calls `measure`: it builds the very step `train.main` compiles
(`RunSetup`), times 150 warm steps the way the loop runs them (mean), the eval over
`eval.eval_batches` (mean of three after its first, compiling call), one checkpoint save
(blocking part plus the wait for the write), the compile, and the start-up (process start to
here, plus data preparation). The costs are recorded in a small per-host cache keyed by
everything that shapes them, so the run's own start-up line can print the same forecast without
timing anything extra (`recorded`); `train_steps` and the edge intervals are left out of the key
because they change the event counts, not the unit costs.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import socket
import statistics
import time

from ml_collections import ConfigDict

from core.jsonio import write_json_atomic
from gates import forecast as forecast_lib

CACHE_ENV = "PREGATE_CACHE_DIR"
# Fields that set how often things happen, not what each costs.
_SCHEDULE_FIELDS = (("train_steps",), ("eval", "eval_every"), ("checkpoint", "save_every"),
                    ("logging", "log_every"), ("eval", "early_stop_patience"),
                    ("eval", "early_stop_min_delta"))


@dataclasses.dataclass(frozen=True)
class UnitCosts:
  """Seconds per event, measured on this host; startup_s is the pre-compile part of a start."""

  step_s: float
  eval_s: float
  save_s: float
  compile_s: float  # the train step's AOT compile
  eval_compile_s: float  # the eval step's first (compiling) call beyond a warm eval
  startup_s: float  # process start to measure (imports, plan) + peak FLOP/s + data + init
  save_blocking_s: float
  step_median_s: float = 0.0
  measured_at: str = ""

  def forecast(self, sched: forecast_lib.Schedule) -> forecast_lib.Forecast:
    return forecast_lib.forecast(sched, step_s=self.step_s, eval_s=self.eval_s,
                                 save_s=self.save_s,
                                 compile_s=self.compile_s + self.eval_compile_s,
                                 startup_s=self.startup_s)


def run_schedule(config: ConfigDict, start: int = 0) -> forecast_lib.Schedule:
  """The loop's event counts for this config (from `start`, a resume)."""
  return forecast_lib.schedule(config.train_steps, config.eval.eval_every,
                               config.checkpoint.save_every, start)


def process_age_s() -> float:
  """Wall seconds since this process started (Linux /proc; an exec keeps the start time, so a
  re-exec for the malloc tunable counts from the first start). 0.0 where unknown."""
  try:
    with open("/proc/self/stat", encoding="ascii") as f:
      start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime", encoding="ascii") as f:
      uptime = float(f.read().split()[0])
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
  except (OSError, ValueError, IndexError):
    return 0.0


def cache_key(config: ConfigDict) -> str:
  """Hash of what shapes the unit costs: the config less its schedule fields, the devices and
  the host."""
  import jax
  cfg = config.to_dict()
  for path in _SCHEDULE_FIELDS:
    node = cfg
    for part in path[:-1]:
      node = node.get(part, {})
    node.pop(path[-1], None)
  ident = {"config": cfg, "host": socket.gethostname(), "platform": jax.default_backend(),
           "devices": jax.device_count(), "process_count": jax.process_count()}
  return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _cache_path(config: ConfigDict) -> str:
  root = os.environ.get(CACHE_ENV) or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pregate")
  return os.path.join(root, "forecast", f"{cache_key(config)}.json")


def record(config: ConfigDict, costs: UnitCosts) -> str:
  """Keep the measurement for this config and host (overwrites only an older measurement)."""
  path = _cache_path(config)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_json_atomic(path, dataclasses.asdict(costs))
  return path


def recorded(config: ConfigDict) -> UnitCosts | None:
  """The last `pregate-plan --measure` of this config on this host, if any (else None)."""
  try:
    with open(_cache_path(config), encoding="utf-8") as f:
      return UnitCosts(**json.load(f))
  except (OSError, ValueError, TypeError):
    return None


def measure(config: ConfigDict, *, warmup: int = 5, steps: int = 150) -> UnitCosts:
  """Time the run's real step, eval and save on this host (see the module docstring).

  150 timed steps, not a handful: on the default experiment the mean of the first 20 warm steps
  ran ~4% below the mean of 400 and the forecast missed by +12-24% (docs/benchmarks.md)."""
  startup_s = process_age_s()
  import jax

  from train.ckpt import metadata
  from train.ckpt.checkpointer import Checkpointer
  from train.data import pipeline
  from train.run.setup import scratch_run
  from train.state import flops

  with scratch_run(config, prefix="pregate-measure-") as run:
    rs, t = run.rs, time.perf_counter()
    flops.device_peak(run.model_cfg.dtype)  # the run measures the matmul peak once (CPU)
    state, it = rs.state.fresh_state(), rs.train_iter(run.data.train, warmup + steps + 2)
    jax.block_until_ready(state)
    # Data (a fresh prepare unless data.data_dir is set), teacher, mesh, layout, init: not compile.
    startup_s += run.setup_s - rs.compile_s + time.perf_counter() - t
    state, times = rs.time_steps(state, it, warmup, steps)
    # The mean, not the median: on a shared host the slow steps are part of the wall time.
    step_s, step_median_s = statistics.fmean(times), statistics.median(times)
    eval_set, _ = pipeline.eval_batches(
        run.data.val, batch_size=config.eval.batch_size or config.batch.global_batch,
        seq_len=config.batch.seq_len, n_batches=config.eval.eval_batches, seed=config.seed,
        packing=rs.packing)
    eval_set = [rs.to_global(b) for b in eval_set]
    evals = []
    for _ in range(4):  # the first call compiles the eval step, once per run
      t = time.perf_counter()
      rs.eval_loss(state.params, eval_set)
      evals.append(time.perf_counter() - t)
    ck = config.checkpoint
    ckpt = Checkpointer(os.path.join(run.workdir, "checkpoints"), keep=ck.keep,
                        keep_best=ck.keep_best, async_save=ck.async_save)
    record = metadata.Metadata(extra={"measure": True})
    blocking, save_s = rs.time_save(ckpt, state, it, 1, record, 1.0)
    ckpt.close()
  eval_s = statistics.fmean(evals[1:])
  return UnitCosts(step_s=step_s, step_median_s=step_median_s, eval_s=eval_s, save_s=save_s,
                   compile_s=rs.compile_s,
                   eval_compile_s=max(0.0, evals[0] - eval_s), startup_s=startup_s,
                   save_blocking_s=blocking,
                   measured_at=datetime.datetime.now().isoformat(timespec="seconds"))


def plan_lines(config: ConfigDict) -> list[str]:
  """What `pregate-plan --measure` prints: the measured unit costs and the forecast line."""
  costs = measure(config)
  path = record(config, costs)
  return [f"measured on this host: step {costs.step_s * 1e3:.1f} ms (mean; median "
          f"{costs.step_median_s * 1e3:.1f}), eval "
          f"{costs.eval_s:.2f} s, save {costs.save_s:.2f} s ({costs.save_blocking_s:.2f} s "
          f"blocking), compile {costs.compile_s:.2f} s + eval {costs.eval_compile_s:.2f} s, "
          f"start-up {costs.startup_s:.2f} s; kept in {path} for the run's start-up line",
          costs.forecast(run_schedule(config)).line()]


def start_line(config: ConfigDict, start: int, compile_s: float) -> str:
  """The run's start-up forecast: its own start-up and compile measured now, the other unit
  costs from this host's last `pregate-plan --measure` (nothing extra is timed here)."""
  sched = run_schedule(config, start)
  startup_s = max(0.0, process_age_s() - compile_s)
  costs = recorded(config)
  if costs is None:
    s = sched
    return (f"forecast: start-up {startup_s:.1f} + compile {compile_s:.1f} (measured) + "
            f"{s.steps:,} x step_s + {s.evals} x eval_s + {s.saves} x save_s; step, eval and "
            f"save costs unmeasured: run pregate-plan --measure with this config first")
  now = dataclasses.replace(costs, startup_s=startup_s, compile_s=compile_s)
  return (f"{now.forecast(sched).line()} (start-up and step compile measured now; step, eval, "
          f"eval compile and save from pregate-plan --measure at {costs.measured_at})")
