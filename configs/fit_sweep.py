"""A small scaling-law sweep for `pregate-fit`: tiny character models on the bundled corpus.

Ten runs over four sizes (N = 4,416 .. 28,864) at 20 to 150 tokens per parameter, each passing
the gate on effective tokens with no bypass (all under 2 epochs of Tiny Shakespeare), about
6M tokens in all: a few minutes on a 2-core CPU. Pick a point with the config argument:

  python -m train.main --config=configs/fit_sweep.py:3 --workdir=/tmp/sweep/3

`scripts/fit_sweep.sh OUTDIR` runs every point, then `pregate-fit OUTDIR/*`.
"""
from ml_collections import ConfigDict

from configs import base

# (d_model, n_layers, n_heads, d_ff, train_steps) at 16 x 64 = 1,024 tokens per step; the steps
# give D/N ~ 20, 60 or 150 (the gate's floor and beyond) for each size.
POINTS = (
    (16, 1, 2, 48, 87), (16, 1, 2, 48, 259), (16, 1, 2, 48, 647),
    (24, 1, 2, 64, 167), (24, 1, 2, 64, 501), (24, 1, 2, 64, 1252),
    (32, 1, 2, 96, 303), (32, 1, 2, 96, 908),
    (32, 2, 2, 96, 564), (32, 2, 2, 96, 1128),
)


def get_config(arg: str | None = None) -> ConfigDict:
  index = int(arg) if arg else 0
  if not 0 <= index < len(POINTS):
    raise ValueError(f"configs/fit_sweep.py:{arg}: the sweep has points 0..{len(POINTS) - 1}")
  d_model, n_layers, n_heads, d_ff, steps = POINTS[index]
  c = base.get_config()
  c.model.update(vocab_size=65, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                 n_kv_heads=n_heads, d_ff=d_ff, max_seq_len=64)
  c.batch.update(global_batch=16, seq_len=64)
  c.train_steps = steps
  c.optimizer.update(lr=3e-3, b2=0.99, weight_decay=0.1)
  c.schedule.update(warmup_steps=max(1, steps // 10), min_lr_ratio=0.1)
  c.eval.update(eval_every=steps, eval_batches=20)
  c.checkpoint.update(save_every=steps, keep=1)
  c.logging.log_every = max(1, steps // 4)
  return c
