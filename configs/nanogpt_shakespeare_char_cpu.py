"""nanoGPT's published CPU run shape (4 layers, 4 heads, d_model 128, block 64, batch 12, 2000
iters, lr 1e-3, warmup 100, cosine decay to 2000, min_lr 1e-4, beta2 0.99, dropout 0), so the two
stacks can be compared; nanoGPT reports val loss ~1.88 for it.

SwiGLU's d_ff = 344 (~8/3 x d_model) keeps the model the same size as nanoGPT's 4x GELU MLP
(800,000 parameters vs nanoGPT's 804,096). Compute is float32, as nanoGPT's on CPU: once the
cores were split into devices, bf16 compute was no faster here (docs/benchmarks.md).
Under-provisioned on purpose (D/N ~ 1.9): it needs --force_under_provisioned.
"""
from ml_collections import ConfigDict

from configs import base


def get_config(arg: str | None = None) -> ConfigDict:
  del arg
  c = base.get_config()
  c.model.update(vocab_size=65, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=344,
                 max_seq_len=64, tie_embeddings=True)
  # nanoGPT's data: the file is one document with no end-of-text symbol (vocab 65) and the
  # last 10% of its characters are validation (one document cannot be held out whole).
  c.data.update(eot_token="", val_split="tail")
  c.batch.update(global_batch=12, seq_len=64)
  c.train_steps = 2000
  c.optimizer.update(lr=1e-3, b1=0.9, b2=0.99, weight_decay=0.1, grad_clip=1.0)
  c.schedule.update(warmup_steps=100, decay_steps=2000, min_lr_ratio=0.1)
  c.eval.update(eval_every=250, eval_batches=20)
  c.checkpoint.update(save_every=1000)
  c.logging.log_every = 100
  return c
