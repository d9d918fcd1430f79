"""ModelConfig: the complete, serializable description of an architecture.

Everything that changes a tensor's shape or dtype lives here, so a checkpoint that stores this
dict describes its own architecture and can be rebuilt without the experiment's config file.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from core.checks import is_int
from core.errors import ConfigError

_DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "minimal_with_context")
# einsum: 4-D einsums with repeated K/V heads (fastest on XLA:CPU); xla / cudnn:
# jax.nn.dot_product_attention with that implementation (native GQA); auto: per platform.
ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")
# Architecture family -> its Hugging Face identity (`architectures[0]`, `model_type`). Qwen2 is
# Llama plus biases on the q/k/v projections; o-projection and MLP stay bias-free in both.
HF_IDENTITY = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}


class ModelConfigError(ConfigError):
  """A model config that cannot describe a valid transformer (a ConfigError: exit 2)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  max_seq_len: int
  rope_theta: float = 10000.0
  tie_embeddings: bool = True
  dtype: str = "float32"
  param_dtype: str = "float32"
  norm_eps: float = 1e-5
  # Which Hugging Face architecture the tensors are laid out as; qwen2 <=> qkv_bias.
  family: str = "llama"
  qkv_bias: bool = False
  # Execution-only fields below: tensors and checkpoints are identical whatever their value.
  # Activation rematerialization per block (memory for compute): none | full | dots_saveable |
  # minimal_with_context (keep the named projections and the attention output).
  remat: str = "none"
  attention: str = "auto"  # ATTENTION_IMPLS; the training forward only (decode: einsum)
  # Train with the blocks stacked and scanned (compile time flat in depth): True | False |
  # None = by platform (`layers_scanned`).
  scan_layers: bool | None = None
  loss_chunk: int = 0  # tokens per cross-entropy tile; 0 = full [B, T, vocab] logits

  def __post_init__(self) -> None:
    problems = self.problems()
    if problems:
      raise ModelConfigError("invalid model config: " + "; ".join(problems))

  def problems(self) -> list[str]:
    """Every reason this config cannot build a model, each with the fix."""
    out = []
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
                 "max_seq_len"):
      value = getattr(self, name)
      if not is_int(value, 1):
        out.append(f"model.{name} must be a positive integer, got {value!r}")
    if out:
      return out
    if self.d_model % self.n_heads:
      out.append(f"model.d_model={self.d_model} is not divisible by model.n_heads="
                 f"{self.n_heads}; pick n_heads dividing d_model")
    elif (self.d_model // self.n_heads) % 2:
      out.append(f"head_dim={self.d_model // self.n_heads} must be even for rotary embeddings")
    if self.n_heads % self.n_kv_heads:
      out.append(f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads="
                 f"{self.n_kv_heads}; n_kv_heads must divide n_heads (grouped-query attention)")
    if not self.rope_theta > 0:
      out.append(f"model.rope_theta must be > 0, got {self.rope_theta!r}")
    if self.family not in HF_IDENTITY:
      out.append(f"model.family={self.family!r} is not one of {tuple(HF_IDENTITY)}")
    elif self.qkv_bias != (self.family == "qwen2"):
      out.append(f"model.family={self.family!r} with model.qkv_bias={self.qkv_bias!r}: q/k/v "
                 f"biases are the Qwen2 layout and Llama has none; set both family='qwen2' and "
                 f"qkv_bias=True, or family='llama' and qkv_bias=False")
    if self.remat not in REMAT_POLICIES:
      out.append(f"model.remat={self.remat!r} is not one of {REMAT_POLICIES}")
    if self.attention not in ATTENTION_IMPLS:
      out.append(f"model.attention={self.attention!r} is not one of {ATTENTION_IMPLS}")
    if self.scan_layers is not None and not isinstance(self.scan_layers, bool):
      out.append(f"model.scan_layers must be True, False or None (by platform), got "
                 f"{self.scan_layers!r}")
    if (not isinstance(self.loss_chunk, int) or isinstance(self.loss_chunk, bool)
        or self.loss_chunk < 0):
      out.append(f"model.loss_chunk must be an integer >= 0 (0 = full logits), got "
                 f"{self.loss_chunk!r}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        out.append(f"model.{name}={getattr(self, name)!r} is not one of {_DTYPES}")
    return out

  def layers_scanned(self, platform: str | None = None) -> bool:
    """Whether training stacks and scans the blocks on `platform` (default: JAX's backend).

    None means by platform: scanned on accelerators, where a deep model's unrolled program
    takes minutes to compile and the loop's overhead is small beside a layer's matmuls;
    unrolled on CPU, where the scanned step of the default experiment ran 1.44x slower
    (scripts/ab_scan_layers.py, BUILD_NOTES).
    """
    if self.scan_layers is not None:
      return self.scan_layers
    return (platform or jax.default_backend()) != "cpu"

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @property
  def hf_architecture(self) -> str:
    """transformers' class for these tensors, e.g. LlamaForCausalLM."""
    return HF_IDENTITY[self.family][0]

  @property
  def hf_model_type(self) -> str:
    return HF_IDENTITY[self.family][1]

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
    """Build from a plain mapping (a ConfigDict section or checkpoint JSON); unknown keys fail."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ModelConfigError(f"unknown model config field(s) {unknown}; known: {sorted(names)}")
    return cls(**{k: d[k] for k in d})
