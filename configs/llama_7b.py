"""A 6.7B-parameter Llama (Llama 2 7B's shape) for planning: which devices can train it.

d_model 4096, 32 layers, 32 heads (no grouping), SwiGLU 11008, a 32,000-id BPE, 4,096-token
sequences, bf16 compute over float32 parameters (AdamW moments in float32 too: 16 bytes a
parameter before any activation). The corpus is a placeholder.

  pregate-plan --config=configs/llama_7b.py --device=rtx4090 --devices=1   # no setting fits
  pregate-plan --config=configs/llama_7b.py --device=h100 --devices=8      # prints a fix
"""
from ml_collections import ConfigDict

from configs import base


def get_config(arg: str | None = None) -> ConfigDict:
  del arg
  c = base.get_config()
  c.data.update(corpus="data/your_corpus/*.jsonl", tokenizer="bpe", bpe_vocab_size=32000,
                val_split="documents")
  c.model.update(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                 d_ff=11008, max_seq_len=4096, tie_embeddings=False, dtype="bfloat16",
                 scan_layers=True, loss_chunk=512)
  c.batch.update(global_batch=256, seq_len=4096, grad_accum=1)
  c.train_steps = 130_000
  c.optimizer.update(lr=3e-4, b2=0.95, weight_decay=0.1)
  c.schedule.update(warmup_steps=2000, min_lr_ratio=0.1)
  c.eval.update(eval_every=1000, eval_batches=20, batch_size=32)
  c.checkpoint.update(save_every=1000)
  c.logging.log_every = 50
  return c
