"""Default experiment: a compute-optimal character model on the bundled Tiny Shakespeare.

Planned with the gate's contract v1.2.0 (effective tokens D'): the corpus has U = 1,003,854
unique train characters, and a run may repeat it at most 4 epochs, so at most D' = 3.74M
effective tokens and N <= 186,956 parameters can pass (`pregate-plan
--config=configs/shakespeare_char.py --budget_flops=3e12` advises the same size). N = 152,064;
850 steps of 4,096 tokens = 3.47 epochs, D/N = 22.89 and D'/N = 21.65 >= 20: it passes with no
bypass and trains in a few minutes on a 2-core CPU. (The v1.1 default, N = 311,040 for 1,600
steps, passed on D/N = 21.06 while repeating the corpus 6.53 times, D'/N = 18.21.)
"""
from ml_collections import ConfigDict

from configs import base


def get_config(arg: str | None = None) -> ConfigDict:
  del arg
  c = base.get_config()
  c.model.update(vocab_size=65, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=192,
                 max_seq_len=128)
  # nanoGPT's data: the file is one document with no end-of-text symbol (vocab 65) and the
  # last 10% of its characters are validation (one document cannot be held out whole).
  c.data.update(eot_token="", val_split="tail")
  c.batch.update(global_batch=32, seq_len=128)
  c.train_steps = 850
  c.optimizer.update(lr=2e-3, b2=0.99, weight_decay=0.1)
  c.schedule.update(warmup_steps=50, min_lr_ratio=0.1)
  c.eval.update(eval_every=170, eval_batches=20, tasks="smoke")  # the smoke task: chance 0.25
  c.checkpoint.update(save_every=425)
  c.logging.log_every = 50
  return c
