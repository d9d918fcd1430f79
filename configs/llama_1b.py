"""A 1.1B-parameter Llama (TinyLlama's shape) for planning a real pretraining run on GPUs.

d_model 2048, 22 layers, 32 query / 4 KV heads, SwiGLU 5632, a 32,000-id BPE, 2,048-token
sequences, bf16 compute over float32 parameters, 512 x 2,048 = 1M tokens a step. The corpus is
a placeholder: point data.corpus at your JSONL/Parquet shards. The Chinchilla gate needs
D' >= 20 N = 22B tokens, i.e. train_steps >= ~21k at this batch.

  pregate-plan --config=configs/llama_1b.py --device=h100 --devices=8
"""
from ml_collections import ConfigDict

from configs import base


def get_config(arg: str | None = None) -> ConfigDict:
  del arg
  c = base.get_config()
  c.data.update(corpus="data/your_corpus/*.jsonl", tokenizer="bpe", bpe_vocab_size=32000,
                val_split="documents")
  c.model.update(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                 d_ff=5632, max_seq_len=2048, tie_embeddings=False, dtype="bfloat16",
                 remat="dots_saveable", scan_layers=True, loss_chunk=512)
  c.batch.update(global_batch=512, seq_len=2048, grad_accum=8)
  c.train_steps = 21_000
  c.optimizer.update(lr=4e-4, b2=0.95, weight_decay=0.1)
  c.schedule.update(warmup_steps=2000, min_lr_ratio=0.1)
  c.eval.update(eval_every=1000, eval_batches=20, batch_size=64)
  c.checkpoint.update(save_every=1000)
  c.logging.log_every = 50
  return c
