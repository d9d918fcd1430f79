"""Defaults shared by every experiment; each experiment file overrides what it changes.

Every section an experiment may set is declared here, so a locked ConfigDict turns a misspelled
override into an error instead of a silently ignored field.
"""
from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder


def get_config() -> ConfigDict:
  c = ConfigDict()
  c.seed = 0
  c.train_steps = 1000
  c.model = ConfigDict(dict(
      vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=344,
      max_seq_len=256, rope_theta=10000.0, tie_embeddings=True, dtype="float32",
      param_dtype="float32", norm_eps=1e-5, remat="none",
      family="llama", qkv_bias=False,  # qwen2 + qkv_bias=True: the Qwen2 layout
      # Execution only (models/config.py): attention backend, stacked and scanned layers
      # (None = on accelerators, off on CPU), cross-entropy tile in sequence positions
      # (0 = full logits).
      attention="auto", scan_layers=placeholder(bool), loss_chunk=0))
  c.data = ConfigDict(dict(
      # Files, directories or globs, comma-separated (.txt, .jsonl[.gz|.zst], .parquet);
      # relative paths resolve against the repo root. Unused when `sources` is set.
      corpus="data/tinyshakespeare.txt",
      format="auto",  # auto (by extension) | txt | jsonl | parquet
      text_field="text",  # the JSONL field / Parquet column holding a document's text
      txt_separator="",  # "" = a .txt file is one document; else the text between documents
      tokenizer="char",  # char | byte | bpe
      tokenizer_json="",  # bpe: an existing tokenizer.json, used as is ("" = train one)
      bpe_vocab_size=0,  # bpe training: ids incl. special tokens; 0 = model.vocab_size
      special_tokens="",  # bpe training: extra special tokens, comma-separated
      eot_token="<|endoftext|>",  # appended after every document; "" = none (char/byte)
      val_fraction=0.1,
      val_split="documents",  # documents (whole ones, by content hash) | tail (last tokens)
      workers=0,  # tokenizing processes; 0 = one per CPU core
      data_dir="",  # prepared shards; "" = WORKDIR/data
      val_dir="",  # a separately prepared validation shard; "" = the val split of data_dir
      # A weighted mixture: name -> dict(weight=w, corpus=... or data_dir=..., and optionally
      # format / text_field / txt_separator). Batches follow the weights in blocks of
      # `mixture_block` sequences (stateless: batch i is a function of (seed, i)).
      sources=ConfigDict(),
      mixture_block=2048,
  ))
  c.batch = ConfigDict(dict(global_batch=32, seq_len=128, grad_accum=1))
  c.optimizer = ConfigDict(dict(
      lr=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
      # Non-finite loss/grad: 0 = stop the run (NonFiniteLossError); N > 0 = skip such updates,
      # stopping once more than N were skipped.
      skip_nonfinite=0))
  c.schedule = ConfigDict(dict(warmup_steps=100, decay_steps=0, min_lr_ratio=0.1))
  c.eval = ConfigDict(dict(
      eval_every=250, eval_batches=20, batch_size=0,  # 0 = the train global batch
      early_stop_patience=0,  # evaluations without improvement; 0 = off
      early_stop_min_delta=0.0))
  c.checkpoint = ConfigDict(dict(save_every=500, keep=2, keep_best=1, async_save=True))
  # tensorboard: event files under WORKDIR/tensorboard on process 0 (tensorboardX).
  # weight_norms: parameter and update norms in the step (and the parameter-overflow check).
  c.logging = ConfigDict(dict(log_every=50, tensorboard=True, weight_norms=True))
  # cpu_devices: XLA devices a CPU host's cores are split into (data parallel over cores);
  # 0 = auto (the most, up to one per core, that the batch and mesh divide).
  c.mesh = ConfigDict(dict(data=-1, fsdp=1, tensor=1, cpu_devices=0))
  # Distillation (train/run/teacher.py): teacher = PATH[:STEP] (a pregate run's workdir or
  # checkpoints dir, STEP = latest|best|N; relative paths resolve against the repo root) or
  # hf:DIR; "" = off. The loss is (1 - alpha) * cross-entropy + alpha * KL(teacher || student)
  # at `temperature`, times temperature^2; alpha = 0 is exactly ordinary training.
  c.distill = ConfigDict(dict(teacher="", alpha=0.5, temperature=1.0))
  return c
