"""ModelConfig: the complete, serializable description of an architecture.

Everything that changes a tensor's shape or dtype lives here, so a checkpoint that stores this
dict describes its own architecture and can be rebuilt without the experiment's config file.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from core.config_fields import BIG, field, fields
from core.errors import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots_saveable", "minimal_with_context")
# einsum: 4-D einsums with repeated K/V heads (fastest on XLA:CPU); xla / cudnn:
# jax.nn.dot_product_attention with that implementation (native GQA); auto: per platform.
ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")
# Architecture family -> its Hugging Face identity (`architectures[0]`, `model_type`). Qwen2 is
# Llama plus biases on the q/k/v projections; o-projection and MLP stay bias-free in both.
HF_IDENTITY = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}


class ModelConfigError(ConfigError):
  """A model config that cannot describe a valid transformer (a ConfigError: exit 2)."""


ID = "identity"
X = "execution"  # tensors and checkpoints are identical whatever the value


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The model section of the experiment config, each field declared once here (the model's
  defaults in configs/base.py, its rules, kinds, fuzzing and docs derive from it). The size
  fields are required: a checkpoint's record must state them."""

  vocab_size: int = field(256, ID, "token ids the embedding holds", low=1, high=2**24,
                          required=True, size=True)
  d_model: int = field(128, ID, "width of the residual stream", low=1, high=BIG,
                       required=True, size=True)
  n_layers: int = field(4, ID, "transformer blocks", low=1, high=4096, required=True, size=True)
  n_heads: int = field(4, ID, "query heads; divides d_model, head_dim even (RoPE)", low=1,
                       high=BIG, required=True, size=True)
  n_kv_heads: int = field(4, ID, "key/value heads (grouped-query attention); divides n_heads",
                          low=1, high=BIG, required=True, size=True)
  d_ff: int = field(344, ID, "SwiGLU hidden width", low=1, high=BIG, required=True, size=True)
  max_seq_len: int = field(256, ID, "longest sequence (RoPE positions)", low=1, high=BIG,
                           required=True)
  rope_theta: float = field(10000.0, ID, "RoPE base frequency", low=0.0, low_open=True)
  tie_embeddings: bool = field(True, ID, "output projection shares the embedding", size=True)
  dtype: str = field("float32", ID, "compute dtype", choices=DTYPES)
  param_dtype: str = field("float32", ID, "stored parameter dtype", choices=DTYPES)
  norm_eps: float = field(1e-5, ID, "RMSNorm epsilon", low=0.0, low_open=True, high=1.0)
  # Which Hugging Face architecture the tensors are laid out as; qwen2 <=> qkv_bias.
  family: str = field("llama", ID, "Hugging Face layout: qwen2 is llama plus q/k/v biases",
                      choices=tuple(HF_IDENTITY))
  qkv_bias: bool = field(False, ID, "biases on q/k/v projections (True exactly for qwen2)")
  remat: str = field("none", X, "activation rematerialization per block (memory for compute)",
                     choices=REMAT_POLICIES)
  attention: str = field("auto", X, "attention backend of the training forward (decode: "
                         "einsum); auto = per platform", choices=ATTENTION_IMPLS)
  scan_layers: bool | None = field(None, X, "stack and scan the blocks (compile time flat in "
                                   "depth); None = on accelerators, off on CPU")
  loss_chunk: int = field(0, X, "cross-entropy tile in sequence positions; 0 = full logits",
                          low=0, high=BIG)

  def __post_init__(self) -> None:
    problems = self.problems()
    if problems:
      raise ModelConfigError("invalid model config: " + "; ".join(problems))

  def problems(self) -> list[str]:
    """Every reason this config cannot build a model, each with the fix: each field against its
    declaration, then (once those hold) the relations between fields."""
    out = [p for f in FIELDS if (p := f.problem(getattr(self, f.name)))]
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
    if self.qkv_bias != (self.family == "qwen2"):
      out.append(f"model.family={self.family!r} with model.qkv_bias={self.qkv_bias!r}: q/k/v "
                 f"biases are the Qwen2 layout and Llama has none; set both family='qwen2' and "
                 f"qkv_bias=True, or family='llama' and qkv_bias=False")
    return out

  def layers_scanned(self, platform: str | None = None) -> bool:
    """Whether training stacks and scans the blocks on `platform` (default: JAX's backend).

    None means by platform: scanned on accelerators, where a deep model's unrolled program
    takes minutes to compile and the loop's overhead is small beside a layer's matmuls;
    unrolled on CPU, where the scanned step of the default experiment ran 1.44x slower
    (scripts/ab_scan_layers.py, docs/benchmarks.md).
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


FIELDS = tuple(fields(ModelConfig, "model."))
SIZE_FIELDS = tuple(f.name for f in FIELDS if f.size)  # what gates/shapes.Shape holds
