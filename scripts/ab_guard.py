"""The spike guard's step-time cost: the config's step with guard.spike_window as configured
against the same step without the spike test (spike_window=0), in one process.

`PYTHONPATH=$PWD python scripts/ab_guard.py configs/shakespeare_char.py [600]`

Both steps are the run's own (`RunSetup.build`: mesh, shardings, donation, under the run's
malloc settings), fed the same random batches; they run in alternating blocks of 25 steps
(`steps` each; timed like pregate-bench: dispatch + reading the previous step's loss), so load
shared with other jobs hits both alike. The history is filled first, so the guard judges every
timed step. Prints the median step time of each and their ratio.
"""
from __future__ import annotations

import sys

import ab_timing

import configs


def main(config_path: str, steps: int) -> None:
  from train.runtime import host_memory
  host_memory.reexec_with_tunables()  # the run's malloc settings (huge pages), as train.main
  base = configs.load_file(config_path)
  from models.config import ModelConfig
  from train.runtime import distributed
  model_cfg = ModelConfig.from_dict(base.model.to_dict())
  distributed.split_cpu_cores(base, model_cfg, multi_process=False)
  import numpy as np

  from train.run.setup import RunSetup

  window = base.guard.spike_window
  rng = np.random.default_rng(0)
  shape = (base.batch.global_batch, base.batch.seq_len)
  host = [{k: rng.integers(0, model_cfg.vocab_size, shape, np.int32)
           for k in ("inputs", "targets")} for _ in range(8)]
  runs = {}
  for w in (0, window):
    config = configs.load_file(config_path)
    config.guard.spike_window = w
    rs = RunSetup.build(config, model_cfg)
    batches = [rs.to_global(b) for b in host]
    state = ab_timing.warm(rs.compiled, rs.state.fresh_state(), batches, max(window, 10))
    runs[w] = [rs.compiled, state, batches]
  med = ab_timing.alternate(runs, steps)
  print(f"step time: no spike test {med[0]:.3f} ms, spike_window={window} {med[window]:.3f} ms "
        f"(median of {steps} steps each, alternating; guarded / plain = "
        f"{med[window] / med[0]:.3f})")


if __name__ == "__main__":
  args = sys.argv[1:]
  main(args[0], int(args[1]) if len(args) > 1 else 600)
