"""Scanned vs unrolled layers: compile time against depth, and step time at the config's depth.

`PYTHONPATH=$PWD python scripts/ab_scan_layers.py [configs/shakespeare_char.py] [4,32] [3] [400]`

For each depth and layout, the config's full train step (AdamW, clipping, the run's mesh and
shardings, donation; what train.main compiles) is lowered and compiled `reps` times, each on a
fresh jit so nothing is cached (no persistent cache on CPU). Layouts alternate within each
repetition, so machine load shared with other jobs hits both alike. Prints median compile
seconds, the compiled ENTRY's fusion count and the HLO text size, then the 'deep / shallow'
ratios (issue 13's acceptance: within 1.5x with scan). Also the one-off cost of the save-time
conversion (train/state/layout.py) at the deepest setting. Last, an in-process step-time A/B
at the config's own depth and mesh: both compiled steps run in alternating blocks of 25 steps
(`steps` each; timed like pregate-bench: dispatch + reading the previous step's loss).
"""
from __future__ import annotations

import statistics
import sys
import time

import ab_timing

import configs


def main(config_path: str, depths: list[int], reps: int, steps: int) -> None:
  config = configs.load_file(config_path)
  from models.config import ModelConfig
  from train.runtime import distributed
  distributed.split_cpu_cores(config, ModelConfig.from_dict(config.model.to_dict()),
                              multi_process=False)
  import jax

  from models.config import ModelConfig
  from train.state import sharding
  from train.state import step as step_lib
  from train.state.setup import TrainSetup

  tx, schedule = step_lib.make_optimizer(config), step_lib.lr_schedule(config)
  b = config.batch
  setups = {}
  for depth in depths:
    for scan in (False, True):
      model_cfg = ModelConfig.from_dict({**config.model.to_dict(), "n_layers": depth,
                                         "scan_layers": scan})
      mesh = sharding.make_mesh(sharding.run_mesh_shape(config, model_cfg, jax.device_count()))
      setups[depth, scan] = TrainSetup.build(model_cfg, tx, config.seed, mesh)
  times: dict[tuple[int, bool], list[float]] = {k: [] for k in setups}
  shape: dict[tuple[int, bool], tuple[int, int]] = {}
  for _ in range(reps):
    for key, setup in setups.items():
      batch = sharding.abstract_batch(b, setup.mesh)
      step = setup.jit_step(step_lib.make_train_step(
          setup.graphdef, tx, schedule, b.grad_accum, mesh=setup.mesh))
      t = time.perf_counter()
      compiled = step.lower(setup.abstract_state(), batch).compile()
      times[key].append(time.perf_counter() - t)
      entry = compiled.as_text().split("ENTRY", 1)[1]
      shape[key] = (entry.count(" fusion("), len(compiled.as_text()))
  print(f"{'layers':>6} {'layout':>8} {'compile_s':>10} {'fusions':>8} {'hlo_chars':>10}")
  for (depth, scan), ts in times.items():
    print(f"{depth:>6} {'scanned' if scan else 'unrolled':>8} {statistics.median(ts):>10.2f} "
          f"{shape[depth, scan][0]:>8} {shape[depth, scan][1]:>10}")
  lo, hi = min(depths), max(depths)
  for scan in (False, True):
    ratio = statistics.median(times[hi, scan]) / statistics.median(times[lo, scan])
    print(f"{'scanned' if scan else 'unrolled'}: compile {hi} / {lo} layers = {ratio:.2f}x")
  deep = setups[hi, True]
  train_state = deep.fresh_state()
  for label, fn, arg in (("to_stored", deep.to_stored, train_state),
                         ("to_train", deep.to_train, deep.to_stored(train_state))):
    ts = []
    for _ in range(2):
      t = time.perf_counter()
      jax.block_until_ready(fn(arg))
      ts.append(time.perf_counter() - t)
    print(f"{label} at {hi} layers: first call (compile + copy) {ts[0]:.2f} s, then "
          f"{ts[1]:.3f} s")
  if steps:
    step_time_ab(config, steps)


def step_time_ab(config, steps: int) -> None:
  """Median step ms of the config's step, unrolled vs scanned, in alternating blocks."""
  import jax
  import numpy as np

  from models.config import ModelConfig
  from train.state import sharding
  from train.state import step as step_lib
  from train.state.setup import TrainSetup

  tx, schedule = step_lib.make_optimizer(config), step_lib.lr_schedule(config)
  rng = np.random.default_rng(0)
  runs = {}
  for scan in (False, True):
    model_cfg = ModelConfig.from_dict({**config.model.to_dict(), "scan_layers": scan})
    mesh = sharding.make_mesh(sharding.run_mesh_shape(config, model_cfg, jax.device_count()))
    setup = TrainSetup.build(model_cfg, tx, config.seed, mesh)
    shape = (config.batch.global_batch, config.batch.seq_len)
    batches = [{k: jax.device_put(rng.integers(0, model_cfg.vocab_size, shape, np.int32),
                                  sharding.batch_sharding(mesh)) for k in ("inputs", "targets")}
               for _ in range(8)]
    step = setup.jit_step(step_lib.make_train_step(
        setup.graphdef, tx, schedule, config.batch.grad_accum, mesh=mesh)).lower(
            setup.abstract_state(), batches[0]).compile()
    runs[scan] = [step, ab_timing.warm(step, setup.fresh_state(), batches, 10), batches]
  med = ab_timing.alternate(runs, steps)
  print(f"step time at {config.model.n_layers} layers: unrolled {med[False]:.3f} ms, scanned "
        f"{med[True]:.3f} ms (median of {steps} steps each; scanned / unrolled "
        f"= {med[True] / med[False]:.3f})")

if __name__ == "__main__":
  args = sys.argv[1:]
  main(args[0] if args else "configs/shakespeare_char.py",
       [int(x) for x in (args[1] if len(args) > 1 else "4,32").split(",")],
       int(args[2]) if len(args) > 2 else 3, int(args[3]) if len(args) > 3 else 400)
