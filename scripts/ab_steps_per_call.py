"""Two host-side levers on XLA:CPU's multi-device step, A/B in one process (docs/decisions.md
"CPU hosts"): K training steps per call (`lax.scan` over K stacked batches, the per-call
dispatch, batch placement and metric read paid once per K steps) against the loop's one step per
call, and the Eigen threads that run the devices pinned one per core against free.

  PYTHONPATH=$PWD python scripts/ab_steps_per_call.py configs/nanogpt_shakespeare_char_cpu.py \
      [K] [ROUNDS]

Each round times a block of 3K steps of every variant in turn, so load shared with other jobs hits
them alike; prints the median milliseconds per step.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

from absl import flags
from ml_collections import config_flags


def eigen_threads() -> list[int]:
  """Thread ids of XLA:CPU's Eigen pool (the threads that run the devices' programs)."""
  ids = []
  for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/comm") as f:
      if f.read().startswith("tf_XLAEigen"):
        ids.append(int(tid))
  return ids


def main() -> None:
  config_path, rest = sys.argv[1], sys.argv[2:]
  k = int(rest.pop(0)) if rest and not rest[0].startswith("--") else 10
  rounds = int(rest.pop(0)) if rest and not rest[0].startswith("--") else 6
  config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
  flags.FLAGS([sys.argv[0], f"--config={config_path}", *rest])
  config = flags.FLAGS.config
  import jax
  import numpy as np

  from train.run.setup import scratch_run
  from train.state import sharding
  from train.state import step as step_lib

  with scratch_run(config) as run:
    rs, st = run.rs, run.rs.state
    step_fn = step_lib.make_train_step(
        st.graphdef, rs.tx, step_lib.lr_schedule(config), config.batch.grad_accum,
        skip_nonfinite=config.optimizer.skip_nonfinite > 0, mesh=rs.mesh, weight_norms=False,
        spike_window=config.guard.spike_window, spike_sigma=config.guard.spike_sigma)
    stacked = jax.sharding.NamedSharding(
        rs.mesh, jax.sharding.PartitionSpec(None, *rs.batch_sharding.spec))
    scan = jax.jit(lambda state, batches: jax.lax.scan(step_fn, state, batches),
                   in_shardings=(st.shardings, stacked),
                   out_shardings=(st.shardings, sharding.replicated(rs.mesh)), donate_argnums=0)
    it = rs.train_iter(run.data.train, 10 * rounds * 3 * k + 100)

    def k_steps(state: Any, blocks: int) -> tuple[Any, float]:
      t = time.perf_counter()
      for _ in range(blocks):
        rows = [next(it) for _ in range(k)]
        batches = {name: jax.device_put(np.stack([r[name] for r in rows]), stacked)
                   for name in rows[0]}
        state, m = scan(state, batches)
        float(m["loss"][-1])
      return state, (time.perf_counter() - t) / (blocks * k)

    state, _ = k_steps(rs.state.fresh_state(), 2)
    state, _ = rs.time_steps(state, it, 5, 5)
    eigen, cores = eigen_threads(), sorted(os.sched_getaffinity(0))
    times: dict[str, list[float]] = {"1 step per call": [], f"{k} steps per call": [],
                                     "Eigen threads pinned": []}
    for _ in range(rounds):
      state, t = rs.time_steps(state, it, 0, 3 * k)
      times["1 step per call"].append(statistics.median(t))
      state, t_k = k_steps(state, 3)
      times[f"{k} steps per call"].append(t_k)
      for core, tid in enumerate(eigen):
        os.sched_setaffinity(tid, {cores[core % len(cores)]})
      state, t = rs.time_steps(state, it, 0, 3 * k)
      times["Eigen threads pinned"].append(statistics.median(t))
      for tid in eigen:
        os.sched_setaffinity(tid, set(cores))
  for name, values in times.items():
    print(f"{name:22s} {1e3 * statistics.median(values):7.2f} ms per step "
          f"({', '.join(f'{1e3 * v:.2f}' for v in values)})")


if __name__ == "__main__":
  main()
