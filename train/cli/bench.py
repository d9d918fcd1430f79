"""`pregate-bench --config=configs/x.py`: speed figures for a config, as medians.

Prints step time, tokens/s, model FLOP/s, MFU against this machine's measured fp32 and bf16
matmul peaks, compile time, data-pipeline tokens/s next to the step's token demand, checkpoint
save blocking time, and the collectives in the compiled step (all-gather / reduce-scatter /
all-reduce counts from the HLO). The step is the one `train.main` compiles (`RunSetup`), so the
figures are the run's; a distillation config's step carries its teacher, whose parameter memory
and forward FLOPs are reported too (teacher_*). Nothing here gates a run; figures go to
docs/benchmarks.md.
"""
from __future__ import annotations

import os
import re
import statistics
from typing import Any

from absl import flags
from ml_collections import config_flags

from core import cli
from core.errors import ConfigError

FLAGS = flags.FLAGS
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def _define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
  flags.DEFINE_integer("steps", 100, "Timed steps (after warm-up).")
  flags.DEFINE_integer("warmup", 10, "Untimed steps after compile.")
  flags.DEFINE_integer("saves", 5, "Checkpoint saves to time.")


def collective_counts(hlo_text: str) -> dict[str, int]:
  """Count collective ops (sync or async-start forms) in optimized HLO text."""
  return {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo_text)) for op in COLLECTIVES}


def bench(config: Any, steps: int, warmup: int, saves: int) -> dict[str, float | str]:
  import jax

  from models.params import count_params
  from train.ckpt import metadata
  from train.ckpt.checkpointer import Checkpointer
  from train.data import pipeline
  from train.run import teacher as teacher_lib
  from train.run.setup import scratch_run
  from train.state import flops, sharding

  bcfg = config.batch
  with scratch_run(config) as run:
    model_cfg, data, rs, teacher = run.model_cfg, run.data, run.rs, run.rs.teacher
    counts = count_params(model_cfg)
    out: dict[str, float | str] = {"config_params": counts.total,
                                   "mesh": sharding.describe(rs.mesh)}
    # A distillation run's frozen teacher: its memory, and its forward's FLOPs (in model_gflops
    # and MFU below, like the loop's; 0 at alpha = 0, where its forward does not run).
    teacher_fpt = teacher_lib.forward_flops_per_token(teacher, config)
    if teacher is not None:
      out.update(teacher_params=teacher.n_params,
                 teacher_param_mib=teacher.param_bytes() / 2**20,
                 teacher_fwd_gflops_per_step=teacher_fpt * bcfg.global_batch * bcfg.seq_len / 1e9)
    out["data_tokens_per_s"] = pipeline.measure_throughput(rs.train_iter(data.train, 10**6), 500)
    out["compile_s"] = rs.compile_s
    out.update({f"hlo_{k}": v for k, v in collective_counts(rs.compiled.as_text()).items()})
    state, it = rs.state.fresh_state(), rs.train_iter(data.train, 10**6)
    state, times = rs.time_steps(state, it, warmup, steps)
    step_s = statistics.median(times)
    tokens = bcfg.global_batch * bcfg.seq_len
    fpt = flops.flops_per_token(model_cfg, counts.total, bcfg.seq_len) + teacher_fpt
    stats = flops.compiled_stats(rs.compiled)
    out.update(step_ms=1e3 * step_s, tokens_per_s=tokens / step_s,
               model_gflops=tokens * fpt / step_s / 1e9,
               xla_gflops_per_step=stats["xla_flops"] / 1e9,
               step_memory_mib=stats.get("memory_bytes", 0) / 2**20)
    peak_mem = flops.device_peak_memory()
    if peak_mem is not None:
      out["device_peak_memory_mib"] = peak_mem / 2**20
    for dt in ("float32", "bfloat16"):
      peak, src = flops.device_peak(dt)
      out[f"peak_{dt}_gflops"] = peak * jax.device_count() / 1e9
      out[f"mfu_vs_{dt}"] = tokens * fpt / step_s / (peak * jax.device_count())
      out[f"hfu_vs_{dt}"] = stats["xla_flops"] / step_s / peak  # one device's program
    out["peak_source"] = src
    out["data_vs_step_demand"] = out["data_tokens_per_s"] / out["tokens_per_s"]
    ckpt = Checkpointer(os.path.join(run.workdir, "ckpt"), keep=2, keep_best=0)
    blocking = []
    for i in range(saves):
      state, m = rs.compiled(state, rs.to_global(next(it)))
      jax.block_until_ready(state)
      record = metadata.Metadata(extra={"bench": True})
      blocking.append(rs.time_save(ckpt, state, it, i + 1, record)[0])
    ckpt.close()
    out["save_blocking_ms"] = 1e3 * statistics.median(blocking)
  return out


def main(argv: list[str]) -> None:
  del argv
  if FLAGS.config is None:
    raise ConfigError("no experiment config: pass --config=configs/<name>.py")
  for name in ("steps", "saves"):
    if FLAGS[name].value < 1:
      raise ConfigError(f"--{name} must be >= 1, got {FLAGS[name].value}")
  if FLAGS.warmup < 0:
    raise ConfigError(f"--warmup must be >= 0, got {FLAGS.warmup}")
  from train.runtime import host_memory
  host_memory.reexec_with_tunables()
  res = bench(FLAGS.config, FLAGS.steps, FLAGS.warmup, FLAGS.saves)
  width = max(len(k) for k in res)
  for k, v in res.items():
    print(f"{k:<{width}}  {v:,.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
