"""In-process A/B of the weight norms' cost on a config's train step (BUILD_NOTES, watching a run).

`PYTHONPATH=$PWD python scripts/ab_weight_norms.py configs/nanogpt_shakespeare_char_cpu.py 600`

A is the shipped step with `weight_norms=False` (no parameter or update norm), B the shipped
step as train.main compiles it (`logging.weight_norms=True`, the default). Both are compiled the
way train.bench compiles (same mesh, shardings, donation) and timed in alternating blocks of 25
steps in one process, so machine load shared with other jobs hits both alike; each step is timed
like train.bench (dispatch + reading the previous step's loss). Also prints each compiled step's
fusion and copy counts.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
import time


def _config(path: str):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def main(config_path: str, steps: int) -> None:
  config = _config(config_path)
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
  variants_fns = {name: step_lib.make_train_step(setup.graphdef, tx, schedule,
                                                 config.batch.grad_accum, mesh=mesh,
                                                 weight_norms=norms)
                  for name, norms in (("A_without", False), ("B_with", True))}
  bs = sharding.batch_sharding(mesh)
  rng = np.random.default_rng(0)
  shape = (config.batch.global_batch, config.batch.seq_len)
  batches = [{k: jax.device_put(rng.integers(0, model_cfg.vocab_size, shape, np.int32), bs)
              for k in ("inputs", "targets")} for _ in range(8)]
  variants = {}
  for name, fn in variants_fns.items():
    state = setup.fresh_state()
    compiled = setup.jit_step(fn).lower(state, batches[0]).compile()
    entry = compiled.as_text().split("ENTRY", 1)[1]
    print(f"{name}: {entry.count(' fusion(')} fusions, {entry.count(' copy(')} copies")
    for i in range(10):
      state, m = compiled(state, batches[i % 8])
    jax.block_until_ready(m)
    variants[name] = [compiled, state, []]
  done = 0
  while done < steps:
    for v in variants.values():
      compiled, state, times = v
      prev = None
      for i in range(25):
        t = time.perf_counter()
        state, m = compiled(state, batches[i % 8])
        if prev is not None:
          float(prev["loss"])
        prev = m
        times.append(time.perf_counter() - t)
      jax.block_until_ready(state)
      v[1] = state
    done += 25
  med = {k: 1e3 * statistics.median(v[2]) for k, v in variants.items()}
  for k, v in med.items():
    print(f"{k}: median step {v:.3f} ms over {len(variants[k][2])} steps")
  print(f"cost of the norms: {100 * (med['B_with'] / med['A_without'] - 1):+.2f}%")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
