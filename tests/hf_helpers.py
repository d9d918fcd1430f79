"""Shared pieces of the Hugging Face interop tests: tiny GQA models in both families with every
tensor random (biases and norm scales too, so a mapping error cannot hide behind zeros and
ones), pregate checkpoints written in the test, and float32 logits from both sides."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import helpers

# Llama/Qwen2 x tied/untied, all with grouped-query attention (4 query heads, 2 KV heads).
CASES = [("llama", True), ("llama", False), ("qwen2", True), ("qwen2", False)]
IDS = [f"{f}-{'tied' if t else 'untied'}" for f, t in CASES]
PROMPT_CHARS = 24  # >= 16 positions: position 0 alone cannot see a RoPE layout error
TOL = 1e-4


def corpus() -> str:
  return helpers.CORPUS.read_text(encoding="utf-8")


def char_tokenizer():
  from train.data.tokenizer import build_tokenizer
  return build_tokenizer("char", corpus())


def model_config(family: str, tied: bool, **changes: Any):
  from models.config import ModelConfig
  fields = dict(vocab_size=65, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                max_seq_len=64, rope_theta=500.0, norm_eps=1e-5, tie_embeddings=tied,
                family=family, qkv_bias=family == "qwen2")
  return ModelConfig(**{**fields, **changes})


def random_params(cfg, seed: int = 0, std: float = 0.2) -> dict[str, np.ndarray]:
  """Flat pregate params, every entry drawn at random (scales around 1)."""
  from train.hf.weights import signature
  rng = np.random.default_rng(seed)
  out = {}
  for path, (shape, dtype) in sorted(signature(cfg).items()):
    base = 1.0 if path.endswith("/scale") else 0.0
    out[path] = (base + rng.normal(0.0, std, shape)).astype(dtype)
  return out


def card_provenance(step: int = 7) -> dict[str, Any]:
  """What a training run records and the model card states (figures are the test's own)."""
  return {"step": step, "tokens_seen": 123_456, "planned_tokens": 123_456, "val_loss": 2.25,
          "gate": {"zone": "under_provisioned", "passed": False, "bypassed": True,
                   "ratio": 4.5, "floor_ratio": 20, "contract": "chinchilla",
                   "contract_version": "1"},
          "data": {"source_sha256": "ab" * 32, "train_sha256": "cd" * 32,
                   "val_sha256": "ef" * 32, "train_tokens": 1000, "val_tokens": 100},
          "libraries": {"jax": "0.10.2", "flax": "0.12.8"}, "git_commit": "0123abcd"}


def make_checkpoint(root: Path, cfg, params=None, tokenizer=None, provenance=None) -> Path:
  """A pregate checkpoint dir written in the test (through the importer's writer)."""
  from train.hf.importer import write_checkpoint
  write_checkpoint(str(root), cfg, random_params(cfg) if params is None else params,
                   tokenizer or char_tokenizer(),
                   card_provenance() if provenance is None else provenance)
  return root


def prompt_ids(tokenizer, n: int = PROMPT_CHARS) -> np.ndarray:
  return tokenizer.encode(corpus()[1000:1000 + n])


def pregate_logits(model, ids: np.ndarray) -> np.ndarray:
  import jax.numpy as jnp
  return np.asarray(model(jnp.asarray(ids, jnp.int32)[None])[0])


def hf_load(hf_dir: Path):
  """AutoModelForCausalLM in float32, asserting nothing was missing, unexpected or resized."""
  import torch
  from transformers import AutoModelForCausalLM
  model, info = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                     output_loading_info=True)
  assert {k: list(v) for k, v in info.items()} == {
      "missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}, info
  return model.eval()


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.tensor(np.asarray(ids, np.int64)[None])).logits[0].float().numpy()


def per_position_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.abs(a - b).max(axis=-1)
