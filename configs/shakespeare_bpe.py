"""A BPE experiment on the bundled Tiny Shakespeare: a 512-id byte-level BPE trained on the
corpus's training documents, and a model sized so the Chinchilla gate passes honestly.

Data: the file is split into documents at blank lines (7,222 speeches), each followed by
<|endoftext|>; 10% of the documents (by content hash) are held out whole. BPE-512 encodes the
training documents in U = 508,852 tokens (1.94 bytes/token), so U is small. Gate v1.2 judges
effective tokens D' and allows at most 4 epochs: D' can reach 3.72 U = 1.89M, so N <= ~94.6k.
N = 94,032 (d_ff 112); 496 steps of 4,096 tokens = 3.99 epochs, D'/N = 20.1. The gate judges D'
right after preparation (the BPE is trained there), before anything compiles;
`pregate-plan --config=configs/shakespeare_bpe.py --data_dir=WORKDIR/data` shows the arithmetic.
"""
from ml_collections import ConfigDict

from configs import base


def get_config(arg: str | None = None) -> ConfigDict:
  del arg
  c = base.get_config()
  c.data.update(tokenizer="bpe", bpe_vocab_size=512, txt_separator="\n\n",
                eot_token="<|endoftext|>", val_split="documents")
  c.model.update(vocab_size=512, d_model=48, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=112,
                 max_seq_len=128)
  c.batch.update(global_batch=32, seq_len=128)
  c.train_steps = 496
  c.optimizer.update(lr=3e-3, b2=0.99, weight_decay=0.1)
  c.schedule.update(warmup_steps=40, min_lr_ratio=0.1)
  c.eval.update(eval_every=124, eval_batches=20)
  c.checkpoint.update(save_every=248)
  c.logging.log_every = 40
  return c
