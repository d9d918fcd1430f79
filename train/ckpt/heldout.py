"""Held-out proof for `pregate-stamp`: what a claimed architecture scores on text it never saw.

Shapes alone cannot tell a right rope_theta, norm_eps or head split from a wrong one, so a stamp
must show that the tensors, run as the claimed config, compute a trained model: the held-out
loss must be clearly below the random level ln V (a wrong non-shape field scrambles a trained
model towards it), near the loss the operator states (when stated), and no other head split
with the same tensor shapes, nor a common rope_theta, may explain the tensors clearly better.
The parameters are restored once onto this host's devices; each candidate config costs one
small compile and forward pass over at most MAX_TOKENS tokens.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from core.errors import DataError
from core.paths import resolve_path
from models.config import ModelConfig
from train.data.prepare import read_corpus, split_tokens
from train.data.tokenizer import Tokenizer
from train.state import step as step_lib

MAX_TOKENS = 16_384  # held-out tokens scored per candidate (enough to separate configs)
WINDOWS_PER_BATCH = 8
ROPE_THETAS = (10_000.0, 100_000.0, 500_000.0, 1_000_000.0)


@dataclasses.dataclass(frozen=True)
class Heldout:
  ids: np.ndarray
  source: str  # what the text is, for the report and the metadata
  sha256: str


def load(tok: Tokenizer, path: str | None, data_cfg: dict[str, Any],
         corpus: str | None) -> Heldout:
  """The held-out token ids: `path` (a text file), or else the validation split of the
  corpus (the text the training run held out: its last val_fraction)."""
  if path:
    text, sha, _ = read_corpus(os.path.abspath(path))
    ids, source = tok.encode(text), f"file {os.path.abspath(path)}"
  else:
    corpus_path = corpus or data_cfg.get("corpus") or ""
    text, sha, _ = read_corpus(resolve_path(corpus_path))
    _, ids = split_tokens(tok.encode(text), float(data_cfg.get("val_fraction") or 0.1))
    source = (f"the validation split (last {data_cfg.get('val_fraction')}) of corpus "
              f"{resolve_path(corpus_path)}")
  if len(ids) < 2:
    raise DataError(f"held-out text ({source}) has {len(ids)} token(s); pass --heldout=FILE "
                    "with some text the checkpoint never trained on")
  return Heldout(np.asarray(ids[:MAX_TOKENS + 1], np.int32), source,
                 hashlib.sha256(sha.encode() + str(len(ids)).encode()).hexdigest())


def _windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping [n, seq_len] windows of inputs and next-token targets."""
  n = max((len(ids) - 1) // seq_len, 1)
  seq_len = min(seq_len, len(ids) - 1)
  return (np.stack([ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]),
          np.stack([ids[i * seq_len + 1:(i + 1) * seq_len + 1] for i in range(n)]))


def loss(params: Any, model_cfg: ModelConfig, held: Heldout, seq_len: int) -> float:
  """Mean next-token loss (nats) of `params` run as `model_cfg` over the held-out windows."""
  graphdef = step_lib.stored_graphdef(model_cfg)
  inputs, targets = _windows(held.ids, min(seq_len, model_cfg.max_seq_len))

  @jax.jit
  def total(p: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    logits = nnx.merge(graphdef, p)(x)
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                                   y))

  nats = 0.0
  for i in range(0, len(inputs), WINDOWS_PER_BATCH):
    nats += float(total(params, inputs[i:i + WINDOWS_PER_BATCH], targets[i:i + WINDOWS_PER_BATCH]))
  return nats / targets.size


def head_splits(cfg: ModelConfig) -> list[tuple[int, int]]:
  """Every other (n_heads, n_kv_heads) whose projections have exactly cfg's shapes."""
  out = []
  for heads in range(1, cfg.d_model + 1):
    if cfg.d_model % heads or (cfg.d_model // heads) % 2 or heads == cfg.n_heads:
      continue
    kv = cfg.n_kv_heads * heads / cfg.n_heads
    if kv == int(kv) and kv >= 1 and heads % int(kv) == 0:
      out.append((heads, int(kv)))
  return out


def alternatives(cfg: ModelConfig) -> list[tuple[str, ModelConfig]]:
  """Same-shape configs that differ in one non-shape field: each head split, common thetas."""
  alts = [(f"model.n_heads/n_kv_heads={h}/{kv}", dataclasses.replace(cfg, n_heads=h,
                                                                      n_kv_heads=kv))
          for h, kv in head_splits(cfg)]
  alts += [(f"model.rope_theta={t:g}", dataclasses.replace(cfg, rope_theta=t))
           for t in ROPE_THETAS if not math.isclose(t, cfg.rope_theta)]
  return alts

