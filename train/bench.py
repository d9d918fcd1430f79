"""`python -m train.bench --config=configs/x.py`: speed figures for a config, as medians.

Prints step time, tokens/s, model FLOP/s, MFU against this machine's measured fp32 and bf16
matmul peaks, compile time, data-pipeline tokens/s next to the step's token demand, checkpoint
save blocking time, and the collectives in the compiled step (all-gather / reduce-scatter /
all-reduce counts from the HLO). Nothing here gates a run; figures go to BUILD_NOTES.md.
"""
from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 100, "Timed steps (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Untimed steps after compile.")
_SAVES = flags.DEFINE_integer("saves", 5, "Checkpoint saves to time.")

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def collective_counts(hlo_text: str) -> dict[str, int]:
  """Count collective ops (sync or async-start forms) in optimized HLO text."""
  return {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo_text)) for op in COLLECTIVES}


def _median_ms(times: list[float]) -> float:
  return 1e3 * statistics.median(times)


def bench(config) -> dict[str, float | str]:
  import jax

  from models.config import ModelConfig
  from models.params import count_params
  from train import checkpoint as ckpt_lib
  from train import data as data_lib
  from train import distributed, flops, prepare_data, provenance, run_state, sharding
  from train import step as step_lib

  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  distributed.split_cpu_cores(config, model_cfg, multi_process=False)
  counts = count_params(model_cfg)
  bcfg = config.batch
  shape = sharding.run_mesh_shape(config, model_cfg, jax.device_count())
  mesh = sharding.make_mesh(shape)
  tx, schedule = step_lib.make_optimizer(config), step_lib.lr_schedule(config)
  setup = run_state.TrainSetup.build(model_cfg, tx, config.seed, mesh)
  out: dict[str, float | str] = {"config_params": counts.total, "mesh": sharding.describe(mesh)}

  with tempfile.TemporaryDirectory() as tmp:
    data_dir = provenance.data_dirs(config.data, tmp)[0]
    prepare_data.ensure_prepared(provenance.resolve_path(config.data.corpus), data_dir,
                                 config.data.tokenizer, config.data.val_fraction)
    train_arr = data_lib.open_split(data_dir, "train")
    make_iter = lambda: data_lib.make_train_iter(
        train_arr, global_batch=bcfg.global_batch, seq_len=bcfg.seq_len, seed=config.seed,
        num_batches=10 ** 6)
    out["data_tokens_per_s"] = data_lib.measure_throughput(make_iter(), 500)

    batch_sharding = sharding.batch_sharding(mesh)
    step_fn = setup.jit_step(
        step_lib.make_train_step(setup.graphdef, tx, schedule, bcfg.grad_accum))
    state = setup.fresh_state()
    it = make_iter()
    put = lambda b: jax.tree.map(lambda x: jax.device_put(x, batch_sharding), b)
    batch = put(next(it))
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    out["compile_s"] = time.perf_counter() - t0
    out.update({f"hlo_{k}": v for k, v in collective_counts(compiled.as_text()).items()})
    for _ in range(_WARMUP.value):
      state, m = compiled(state, put(next(it)))
    jax.block_until_ready(m)
    # The loop as train.main runs it: next batch read and placed, step dispatched, the previous
    # step's metrics read; timed over consecutive steps so host work between steps counts too.
    times, prev = [], None
    for _ in range(_STEPS.value):
      t = time.perf_counter()
      state, m = compiled(state, put(next(it)))
      if prev is not None:
        float(prev["loss"])
      prev = m
      times.append(time.perf_counter() - t)
    jax.block_until_ready(state)
    step_s = statistics.median(times)
    tokens = bcfg.global_batch * bcfg.seq_len
    fpt = flops.flops_per_token(model_cfg, counts.total, bcfg.seq_len)
    out.update(step_ms=1e3 * step_s, tokens_per_s=tokens / step_s,
               model_gflops=tokens * fpt / step_s / 1e9,
               xla_gflops_per_step=(compiled.cost_analysis() or {}).get("flops", 0) / 1e9)
    for dt in ("float32", "bfloat16"):
      peak, src = flops.device_peak(dt)
      out[f"peak_{dt}_gflops"] = peak * jax.device_count() / 1e9
      out[f"mfu_vs_{dt}"] = tokens * fpt / step_s / (peak * jax.device_count())
    out["peak_source"] = src
    out["data_vs_step_demand"] = out["data_tokens_per_s"] / out["tokens_per_s"]

    ckpt = ckpt_lib.Checkpointer(os.path.join(tmp, "ckpt"), keep=2, keep_best=0)
    blocking = []
    for i in range(_SAVES.value):
      state, m = compiled(state, put(next(it)))
      jax.block_until_ready(state)
      t = time.perf_counter()
      ckpt.save(i + 1, state.params, state.opt_state, it, {"bench": True})
      blocking.append(time.perf_counter() - t)
      ckpt.wait()
    ckpt.close()
    out["save_blocking_ms"] = _median_ms(blocking)
  return out


def main(argv: list[str]) -> None:
  del argv
  if _CONFIG.value is None:
    print("ERROR: pass --config=configs/<name>.py", file=sys.stderr)
    sys.exit(2)
  from train import host_memory
  from train.metrics_log import quiet_libraries
  host_memory.reexec_with_tunables()
  quiet_libraries()
  res = bench(_CONFIG.value)
  width = max(len(k) for k in res)
  for k, v in res.items():
    print(f"{k:<{width}}  {v:,.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
