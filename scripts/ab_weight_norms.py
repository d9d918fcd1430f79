"""In-process A/B of the weight norms' cost on a config's train step (BUILD_NOTES, watching a run).

`PYTHONPATH=$PWD python scripts/ab_weight_norms.py configs/nanogpt_shakespeare_char_cpu.py 300 BASE`

A is train/step.py as of git commit BASE (before the norms), B the step as shipped. Both are
compiled the way train.bench compiles (same mesh, shardings, donation) and timed in alternating
blocks of 25 steps in one process, so machine load shared with other jobs hits both alike; each
step is timed like train.bench (dispatch + reading the previous step's loss). Also prints each
compiled step's fusion and copy counts.
"""
from __future__ import annotations

import statistics
import sys
import time


def _module(name: str, path: str):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def main(config_path: str, steps: int, base: str) -> None:
  import os
  import subprocess
  import tempfile
  config = _module("cfg", config_path).get_config()
  base_src = subprocess.run(["git", "show", f"{base}:train/step.py"], check=True,
                            capture_output=True, text=True).stdout
  base_path = os.path.join(tempfile.mkdtemp(), "base_step.py")
  with open(base_path, "w") as f:
    f.write(base_src)

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
  base_fn = _module("base_step", base_path).make_train_step(
      setup.graphdef, tx, schedule, config.batch.grad_accum)

  def base_step(state, batch):  # the same step, its state retyped for the shared shardings
    new, metrics = base_fn(state, batch)
    return step_lib.TrainState(*new), metrics

  variants_fns = {
      "A_base": base_step,
      "B_with": step_lib.make_train_step(setup.graphdef, tx, schedule, config.batch.grad_accum)}

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
  print(f"cost of the norms: {100 * (med['B_with'] / med['A_base'] - 1):+.2f}%")


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
