"""Default experiment: a compute-optimal character model on the bundled Tiny Shakespeare.

Sized so D = train_steps x global_batch x seq_len >= 20 x N (passes the Chinchilla gate with no
bypass) and the run finishes in about 2 minutes on a 2-core CPU.
"""
from ml_collections import ConfigDict

from configs import base


def get_config(arg: str | None = None) -> ConfigDict:
  del arg
  c = base.get_config()
  c.model.update(vocab_size=65, d_model=96, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=256,
                 max_seq_len=128)
  # nanoGPT's data: the file is one document with no end-of-text symbol (vocab 65) and the
  # last 10% of its characters are validation (one document cannot be held out whole).
  c.data.update(eot_token="", val_split="tail")
  c.batch.update(global_batch=32, seq_len=128)
  # N = 311,040 -> 20 N = 6.22M tokens = 1,519 steps of 4,096 tokens; 1,600 gives D/N = 21.1.
  c.train_steps = 1600
  c.optimizer.update(lr=2e-3, b2=0.99, weight_decay=0.1)
  c.schedule.update(warmup_steps=100, min_lr_ratio=0.1)
  c.eval.update(eval_every=200, eval_batches=20)
  c.checkpoint.update(save_every=400)
  c.logging.log_every = 100
  return c
