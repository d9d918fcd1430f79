"""In-process A/B of the weight norms' cost on a config's train step (BUILD_NOTES, watching a run).

`PYTHONPATH=$PWD python scripts/ab_weight_norms.py configs/nanogpt_shakespeare_char_cpu.py 300`

A is the step with param_norm/update_norm dropped from its outputs (XLA then removes their
computation: the step as it was before them), B the step as shipped. Both are compiled the way
train.bench compiles (same mesh, shardings, donation) and timed in alternating blocks of 25
steps in one process, so machine load shared with other jobs hits both alike; each step is timed
like train.bench (dispatch + reading the previous step's loss).
"""
from __future__ import annotations

import statistics
import sys
import time


def main(config_path: str, steps: int) -> None:
  import importlib.util
  spec = importlib.util.spec_from_file_location("cfg", config_path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()

  from models.config import ModelConfig
  from train import distributed
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  distributed.split_cpu_cores(config, model_cfg, multi_process=False)
  import jax
  import numpy as np

  from train import run_state, sharding
  from train import step as step_lib

  mesh = sharding.make_mesh(sharding.run_mesh_shape(config, model_cfg, jax.device_count()))
  tx, schedule = step_lib.make_optimizer(config), step_lib.lr_schedule(config)
  setup = run_state.TrainSetup.build(model_cfg, tx, config.seed, mesh)
  full = step_lib.make_train_step(setup.graphdef, tx, schedule, config.batch.grad_accum)

  def without_norms(state, batch):
    state, metrics = full(state, batch)
    return state, {k: v for k, v in metrics.items() if k not in ("param_norm", "update_norm")}

  bs = sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  shape = (config.batch.global_batch, config.batch.seq_len)
  batches = [{k: jax.device_put(rng.integers(0, model_cfg.vocab_size, shape, np.int32), bs)
              for k in ("inputs", "targets")} for _ in range(8)]
  variants = {}
  for name, fn in (("A_without", without_norms), ("B_with", full)):
    state = setup.fresh_state()
    compiled = setup.jit_step(fn).lower(state, batches[0]).compile()
    for i in range(10):
      state, m = compiled(state, batches[i % 8])
    jax.block_until_ready(m)
    variants[name] = [compiled, state, None, []]
  done = 0
  while done < steps:
    for v in variants.values():
      compiled, state, prev, times = v
      for i in range(25):
        t = time.perf_counter()
        state, m = compiled(state, batches[i % 8])
        if prev is not None:
          float(prev["loss"])
        prev = m
        times.append(time.perf_counter() - t)
      jax.block_until_ready(state)
      v[1], v[2] = state, None
    done += 25
  med = {k: 1e3 * statistics.median(v[3]) for k, v in variants.items()}
  for k, v in med.items():
    print(f"{k}: median step {v:.3f} ms over {len(variants[k][3])} steps")
  print(f"cost of the norms: {100 * (med['B_with'] / med['A_without'] - 1):+.2f}%")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300)
