"""Fingerprint of a config's lowered train step, to show a change left the CPU program alone.

`PYTHONPATH=$PWD python scripts/step_hlo_hash.py configs/shakespeare_char.py`

Lowers the step train.main compiles (the run's mesh and shardings; with and without the weight
norms) and prints the sha256 of its StableHLO text with source locations removed (they name
files, so two checkouts of the same program differ only there). Run it in a worktree of each
commit: equal hashes mean XLA was handed the same program.
"""
from __future__ import annotations

import hashlib
import re
import sys

import configs


def main(path: str) -> None:
  config = configs.load_file(path)
  from models.config import ModelConfig
  from train.runtime import distributed
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  distributed.split_cpu_cores(config, model_cfg, multi_process=False)
  import jax

  from train.state import sharding
  from train.state import step as step_lib
  from train.state.setup import TrainSetup

  tx, schedule = step_lib.make_optimizer(config), step_lib.lr_schedule(config)
  b = config.batch
  mesh = sharding.make_mesh(sharding.run_mesh_shape(config, model_cfg, jax.device_count()))
  setup = TrainSetup.build(model_cfg, tx, config.seed, mesh)
  batch = sharding.abstract_batch(b, mesh)
  for norms in (False, True):
    step = setup.jit_step(step_lib.make_train_step(setup.graphdef, tx, schedule, b.grad_accum,
                                                   mesh=mesh, weight_norms=norms))
    text = re.sub(r"loc\(.*?\)", "", step.lower(setup.abstract_state(), batch).as_text())
    print(f"{path} weight_norms={norms}: {hashlib.sha256(text.encode()).hexdigest()[:16]}")


if __name__ == "__main__":
  main(sys.argv[1])
