"""In-process A/B of the weight norms' cost on a config's train step (docs/benchmarks.md).

`PYTHONPATH=$PWD python scripts/ab_weight_norms.py configs/nanogpt_shakespeare_char_cpu.py 600`

A runs the step without norms (`weight_norms=False`) every step; B the step with parameter and
update norms every step; C what train.main runs (`logging.weight_norms=True`, the default): B on
log steps (every `logging.log_every`), A otherwise. Both steps are compiled the way pregate-bench
compiles (same mesh, shardings, donation) and timed in alternating blocks of 25 steps in one
process, so machine load shared with other jobs hits all alike; each step is timed like
pregate-bench (dispatch + reading the previous step's loss). Also prints each compiled step's
fusion and copy counts.
"""
from __future__ import annotations

import statistics
import sys
import time

import configs


def main(config_path: str, steps: int) -> None:
  config = configs.load_file(config_path)
  from models.config import ModelConfig
  from train.runtime import distributed
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  distributed.split_cpu_cores(config, model_cfg, multi_process=False)
  import jax
  import numpy as np

  from train.state import sharding
  from train.state import step as step_lib
  from train.state.setup import TrainSetup

  mesh = sharding.make_mesh(sharding.run_mesh_shape(config, model_cfg, jax.device_count()))
  tx, schedule = step_lib.make_optimizer(config), step_lib.lr_schedule(config)
  setup = TrainSetup.build(model_cfg, tx, config.seed, mesh)
  fns = {norms: step_lib.make_train_step(setup.graphdef, tx, schedule, config.batch.grad_accum,
                                        mesh=mesh, weight_norms=norms) for norms in (False, True)}
  every = config.logging.log_every
  pick = {"A_without": lambda n: False, "B_every_step": lambda n: True,
          "C_shipped": lambda n: n % every == 0}
  bs = sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  shape = (config.batch.global_batch, config.batch.seq_len)
  batches = [{k: jax.device_put(rng.integers(0, model_cfg.vocab_size, shape, np.int32), bs)
              for k in ("inputs", "targets")} for _ in range(8)]
  compiled = {}
  for norms, fn in fns.items():
    compiled[norms] = setup.jit_step(fn).lower(setup.fresh_state(), batches[0]).compile()
    entry = compiled[norms].as_text().split("ENTRY", 1)[1]
    print(f"weight_norms={norms}: {entry.count(' fusion(')} fusions, "
          f"{entry.count(' copy(')} copies")
  variants = {}
  for name in pick:
    state = setup.fresh_state()
    for i in range(10):
      state, m = compiled[pick[name](i + 1)](state, batches[i % 8])
    jax.block_until_ready(m)
    variants[name] = [state, 10, []]
  done = 0
  while done < steps:
    for name, v in variants.items():
      state, n, times = v
      prev = None
      for i in range(25):
        t = time.perf_counter()
        n += 1
        state, m = compiled[pick[name](n)](state, batches[i % 8])
        if prev is not None:
          float(prev["loss"])
        prev = m
        times.append(time.perf_counter() - t)
      jax.block_until_ready(state)
      v[0], v[1] = state, n
    done += 25
  # Means, not medians: C's log steps are 1 in log_every, which a median would not see.
  mean = {k: 1e3 * statistics.fmean(v[2]) for k, v in variants.items()}
  med = {k: 1e3 * statistics.median(v[2]) for k, v in variants.items()}
  for k in variants:
    print(f"{k}: mean step {mean[k]:.3f} ms, median {med[k]:.3f} ms over "
          f"{len(variants[k][2])} steps")
  for k in ("B_every_step", "C_shipped"):
    print(f"cost of the norms, {k}: {100 * (mean[k] / mean['A_without'] - 1):+.2f}% (mean), "
          f"{100 * (med[k] / med['A_without'] - 1):+.2f}% (median)")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
