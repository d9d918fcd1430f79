"""Step time with document masking on vs off, on the config's own prepared data.

`PYTHONPATH=$PWD python scripts/ab_document_masking.py configs/shakespeare_bpe.py DATA_DIR \
[400]`

Both steps are the run's own (`RunSetup.build`: the run's mesh, shardings, donation, under the
run's malloc settings), fed the pipeline's real batches of DATA_DIR (with segment ids and
positions when masking is on). They run in alternating blocks of 25 steps (`steps` each; timed
like pregate-bench: dispatch + reading the previous step's loss), so machine load shared with
other jobs hits both alike.
Prints the median step time of each and their ratio.
"""
from __future__ import annotations

import sys

import ab_timing

import configs


def main(config_path: str, data_dir: str, steps: int) -> None:
  from train.runtime import host_memory
  host_memory.reexec_with_tunables()  # the run's malloc settings (huge pages), as train.main
  config = configs.load_file(config_path)
  from models.config import ModelConfig
  from train.runtime import distributed
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  distributed.split_cpu_cores(config, model_cfg, multi_process=False)

  from train.data import pipeline
  from train.data.documents import Packing
  from train.run.setup import RunSetup

  train = pipeline.open_split(data_dir, "train")
  b = config.batch
  runs = {}
  for mask in (False, True):
    packing = Packing(mask, mask)
    rs = RunSetup.build(config, model_cfg, packing=packing)
    source = pipeline.BatchSource(train, global_batch=b.global_batch, seq_len=b.seq_len,
                                  seed=config.seed, num_batches=8, packing=packing)
    batches = [rs.to_global(source[i]) for i in range(8)]
    runs[mask] = [rs.compiled, ab_timing.warm(rs.compiled, rs.state.fresh_state(), batches, 10),
                  batches]
  med = ab_timing.alternate(runs, steps)
  print(f"step time: masking off {med[False]:.3f} ms, on {med[True]:.3f} ms (median of "
        f"{steps} steps each, alternating; on / off = {med[True] / med[False]:.3f})")


if __name__ == "__main__":
  args = sys.argv[1:]
  main(args[0], args[1], int(args[2]) if len(args) > 2 else 400)
