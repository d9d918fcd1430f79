"""Scoring a checkpoint: loss, perplexity and bits per token/unit (behind `pregate-eval`).

By default the checkpoint's own recorded eval batches are redrawn from the run's val split, so
the loss must equal the `val_loss` stored with it: a mismatch means the restore, the data or the
model code changed. `--data=FILE` instead scores every token of a text file, in non-overlapping
windows of the trained sequence length, with the checkpoint's embedded tokenizer.
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from core.errors import ConfigError, DataError
from core.paths import data_dirs
from models.transformer import Transformer, packed
from train.ckpt.metadata import Metadata
from train.ckpt.restore import load_for_eval
from train.ckpt.stepspec import checkpoint_dir
from train.data import documents, pipeline
from train.data.documents import PLAIN, Packing
from train.data.tokenizer import Tokenizer

Window = dict[str, np.ndarray]  # inputs, targets, mask and any packed-document arrays
EvalFn = Callable[[Window], tuple[jax.Array, jax.Array]]


def make_eval_fn(model: Transformer) -> EvalFn:
  """One jitted window -> (mean nats over its mask, mask count); fixed shapes keep it to a
  single compile, and the padded tail of a file is masked rather than reshaped. A window with
  segment ids and positions (a masked run's) is run with them."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def loss(state: nnx.State, w: Window) -> tuple[jax.Array, jax.Array]:
    inputs, targets, mask = w["inputs"], w["targets"], w["mask"]
    logits = nnx.merge(graphdef, state)(inputs, **packed(w))
    nats = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    count = jnp.sum(mask)
    return jnp.sum(nats * mask) / jnp.maximum(count, 1.0), count

  return lambda w: loss(state, w)


def val_dir(meta: Metadata, ckpt_dir: str) -> str:
  """Where the run read its val split: as the training run resolves it ('' = WORKDIR/data)."""
  dcfg = (meta.config or {}).get("data") or {}
  return data_dirs(dcfg, os.path.dirname(ckpt_dir))[1]


def file_windows(ids: np.ndarray, seq_len: int, batch_size: int,
                 packing: Packing = PLAIN, eos_id: int | None = None) -> list[Window]:
  """Batches [batch_size, seq_len] of non-overlapping windows covering every next-token target
  of `ids` exactly once; the tail window and filler rows are zero-padded with mask 0. With a
  masked run's `packing`, a document starts after every end-of-text id (`eos_id`), as the
  prepared data lays documents out."""
  n_targets = len(ids) - 1
  n_rows = -(-n_targets // seq_len)
  n_rows = -(-n_rows // batch_size) * batch_size
  flat = np.zeros(n_rows * seq_len + 1, np.int32)
  flat[:len(ids)] = ids
  shape = (n_rows // batch_size, batch_size, seq_len)
  inputs, targets = flat[:-1].reshape(shape), flat[1:].reshape(shape)
  mask = (np.arange(n_rows * seq_len) < n_targets).astype(np.float32).reshape(shape)
  arrays = {"inputs": inputs, "targets": targets, "mask": mask}
  if packing.mask:
    starts = np.zeros(flat.size - 1, bool)
    if eos_id is not None:
      starts[np.flatnonzero(flat[:-2] == eos_id) + 1] = True
    starts = starts.reshape(-1, seq_len)
    starts[:, 0] = True
    arrays.update({k: v.reshape(shape) for k, v in documents.segments(starts, packing).items()})
  return [{k: v[i] for k, v in arrays.items()} for i in range(shape[0])]


def _read_text(path: str, tokenizer: Tokenizer) -> np.ndarray:
  """The file's token ids; unknown characters fail in the tokenizer, naming the first one."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(
        f"cannot read --data={path} as UTF-8 text ({e}); pass a text file") from None
  ids = tokenizer.encode(text)
  if len(ids) < 2:
    raise DataError(f"--data={path} has {len(ids)} token(s); at least 2 are needed to score "
                    "one next-token prediction")
  return ids


def evaluate_checkpoint(path: str, step: str | int = "latest", data: str | None = None,
                        batches: int | None = None) -> dict[str, Any]:
  """Restore `path` at `step` and score it; returns the figures the CLI prints.

  data=None: the recorded eval batches (the first `batches` of that stream when given; only
  the recorded count reproduces `val_loss`). data=FILE: every token of the file (`batches`
  caps the number of window batches).
  """
  if batches is not None and batches < 1:
    raise ConfigError(f"--batches must be a positive integer, got {batches}")
  restored = load_for_eval(path, step)
  meta, tokenizer, model = restored.meta, restored.tokenizer, restored.model
  desc = meta.eval_batches or {}
  train_cfg = (meta.config or {}).get("batch") or {}
  eval_fn = make_eval_fn(model)
  table = tokenizer.token_bytes()  # UTF-8 bytes per id: the bits-per-byte denominator
  recorded = meta.val_loss
  if data is None:
    if not desc:
      raise DataError(f"checkpoint step {restored.step} records no eval batches; pass "
                      "--data=TEXTFILE to evaluate on a text file")
    n = batches or int(desc["n_batches"])
    split = pipeline.open_split(val_dir(meta, checkpoint_dir(path)),
                                desc.get("split", "val"))
    drawn = pipeline.reproduce_eval_batches(split, {**desc, "n_batches": n})
    outs = [eval_fn({**b, "mask": np.ones(b["targets"].shape, np.float32)}) for b in drawn]
    means, counts = zip(*jax.device_get(outs))
    loss = float(np.mean(means))  # the loop's reduction: a mean of equal-size batch means
    n_bytes = sum(int(table[b["targets"]].sum()) for b in drawn)
    source, seq_len = f"recorded eval batches ({split.path})", int(desc["seq_len"])
    if n != int(desc["n_batches"]):
      recorded = None
  else:
    ids = _read_text(data, tokenizer)
    seq_len = min(int(train_cfg.get("seq_len") or model.cfg.max_seq_len), model.cfg.max_seq_len)
    batch_size = int(desc.get("batch_size") or train_cfg.get("global_batch") or 8)
    windows = file_windows(ids, seq_len, batch_size, meta.document_packing,
                           tokenizer.eos_id)[:batches]
    means, counts = zip(*jax.device_get([eval_fn(w) for w in windows]))
    n_bytes = sum(float(np.dot(table[w["targets"]].reshape(-1), w["mask"].reshape(-1)))
                  for w in windows)
    loss = float(np.dot(np.float64(means), np.float64(counts)) / np.sum(np.float64(counts)))
    source, n, recorded = f"file {os.path.abspath(data)}", len(windows), None
  tokens = int(np.sum(np.float64(counts)))
  nats = float(np.dot(np.float64(means), np.float64(counts)))
  # Bits per UTF-8 byte of the scored text compare across tokenizers; a char tokenizer without
  # an end-of-text id emits one token per character, so its bits per character is per token.
  bpb = nats / max(n_bytes, 1) / math.log(2)
  result = {"checkpoint": checkpoint_dir(path), "step": restored.step, "source": source,
            "batches": n, "seq_len": seq_len, "tokens": tokens, "loss": loss,
            "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "bits_per_byte": bpb, "bytes": int(n_bytes),
            "recorded_val_loss": recorded,
            "abs_diff": None if recorded is None else abs(loss - recorded)}
  if data is None:
    result["val_bpb"] = bpb
  if tokenizer.to_json()["type"] == "char" and tokenizer.eos_id is None:
    result["bits_per_char"] = nats / tokens / math.log(2)
  return result


def format_table(result: dict[str, Any]) -> str:
  """A few aligned lines for people; the RESULT line is for scripts."""
  rows = [("checkpoint", f"{result['checkpoint']} (step {result['step']})"),
          ("data", result["source"]),
          ("scored", f"{result['tokens']:,} tokens in {result['batches']} batch(es) of "
                     f"seq_len {result['seq_len']}"),
          ("loss", f"{result['loss']:.6f} nats/token"),
          ("perplexity", f"{result['perplexity']:.4f}"),
          ("bits/token", f"{result['bits_per_token']:.6f}")]
  rows += [(k.replace("bits_per_", "bits/"), f"{v:.6f}") for k, v in result.items()
           if k.startswith("bits_per_") and k != "bits_per_token"]
  if result["recorded_val_loss"] is not None:
    rows.append(("recorded", f"{result['recorded_val_loss']:.6f} (|diff| "
                             f"{result['abs_diff']:.3g})"))
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
