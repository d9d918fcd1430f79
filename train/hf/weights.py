"""Tensor names and layouts between pregate parameters and Hugging Face Llama/Qwen2 weights.

pregate kernels are [d_in, d_out]; `torch.nn.Linear.weight` is [out, in], so every projection is
transposed and nothing else changes. RoPE needs no q/k permutation: `models.transformer.apply_rope`
pairs dimension j with j + head_dim/2 (the half-split `rotate_half` of HF Llama/Qwen2). Applying
`interleaved_to_half` (what a converter from Meta's interleaved layout does) to these tensors
corrupts every position but 0, which is why the tests compare every position.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from core.errors import PregateError
from models.config import ModelConfig

# pregate path (with {i} for the layer) -> HF name, and whether the array is a transposed kernel.
_LAYER = (
    ("attn_norm/scale", "input_layernorm.weight", False),
    ("attn/wq/kernel", "self_attn.q_proj.weight", True),
    ("attn/wq/bias", "self_attn.q_proj.bias", False),
    ("attn/wk/kernel", "self_attn.k_proj.weight", True),
    ("attn/wk/bias", "self_attn.k_proj.bias", False),
    ("attn/wv/kernel", "self_attn.v_proj.weight", True),
    ("attn/wv/bias", "self_attn.v_proj.bias", False),
    ("attn/wo/kernel", "self_attn.o_proj.weight", True),
    ("mlp_norm/scale", "post_attention_layernorm.weight", False),
    ("mlp/w_gate/kernel", "mlp.gate_proj.weight", True),
    ("mlp/w_up/kernel", "mlp.up_proj.weight", True),
    ("mlp/w_down/kernel", "mlp.down_proj.weight", True),
)
_GLOBAL = (("embed", "model.embed_tokens.weight", False),
           ("final_norm/scale", "model.norm.weight", False),
           ("lm_head/kernel", "lm_head.weight", True))
_LAYER_PATH = re.compile(r"blocks/(\d+)/(.+)")
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


class HFConversionError(PregateError):
  """A Hugging Face directory, config or tensor that pregate cannot represent exactly."""


def hf_name(path: str) -> tuple[str, bool]:
  """pregate parameter path -> (HF tensor name, transposed?); unknown paths are refused so a
  parameter added to the model is never silently left out of an export."""
  for ours, theirs, transposed in _GLOBAL:
    if path == ours:
      return theirs, transposed
  m = _LAYER_PATH.fullmatch(path)
  for ours, theirs, transposed in _LAYER if m else ():
    if m.group(2) == ours:
      return f"model.layers.{m.group(1)}.{theirs}", transposed
  raise HFConversionError(f"pregate parameter {path!r} has no Hugging Face Llama/Qwen2 "
                          f"counterpart; a model with it cannot be exported")


def pregate_path(name: str) -> tuple[str, bool] | None:
  """HF tensor name -> (pregate path, transposed?), or None for a name pregate has no slot for."""
  for ours, theirs, transposed in _GLOBAL:
    if name == theirs:
      return ours, transposed
  m = _HF_LAYER.fullmatch(name)
  for ours, theirs, transposed in _LAYER if m else ():
    if m.group(2) == theirs:
      return f"blocks/{m.group(1)}/{ours}", transposed
  return None


def hf_order(name: str) -> tuple[int, int, str]:
  """Sort key: embeddings, then layers in numeric order, then the final norm and head."""
  m = _HF_LAYER.fullmatch(name)
  if m:
    return 1, int(m.group(1)), m.group(2)
  return (0, 0, name) if name.startswith("model.embed") else (2, 0, name)


def to_hf(params: Mapping[str, np.ndarray], dtype: np.dtype | None = None
          ) -> dict[str, np.ndarray]:
  """Flat pregate params ('blocks/0/attn/wq/kernel' -> array) -> HF state dict, in HF order.
  Arrays are C-contiguous copies (safetensors writes raw buffers)."""
  out = {}
  for path, arr in params.items():
    name, transposed = hf_name(path)
    arr = np.asarray(arr)
    arr = arr.T if transposed else arr
    out[name] = np.ascontiguousarray(arr.astype(dtype) if dtype is not None else arr)
  return dict(sorted(out.items(), key=lambda kv: hf_order(kv[0])))


def check_tensors(found: Mapping[str, tuple[tuple[int, ...], str]],
                  expected: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
  """HF name -> (shape, dtype) against the configured model's signature (pregate path ->
  (shape, dtype)): missing, extra, mis-shaped or mis-typed tensors are refused, naming the first
  few. Reads no tensor data, so it can run on safetensors headers alone."""
  slots = {name: pregate_path(name) for name in found}
  extra = [n for n, slot in slots.items() if slot is None or slot[0] not in expected]
  if extra:
    raise HFConversionError(f"unexpected tensor(s) {_few(extra)}: pregate has no slot for them "
                            f"in this architecture ({_hint(extra)})")
  have = {slot[0] for slot in slots.values()}
  missing = sorted(hf_name(p)[0] for p in expected if p not in have)
  if missing:
    raise HFConversionError(f"missing tensor(s) {_few(missing)}: the checkpoint is incomplete "
                            f"for the architecture its config.json describes")
  for path, (shape, dtype) in expected.items():
    name, transposed = hf_name(path)
    want = tuple(reversed(shape)) if transposed else tuple(shape)
    got_shape, got_dtype = found[name]
    if tuple(got_shape) != want:
      raise HFConversionError(f"tensor {name} has shape {list(got_shape)} but config.json "
                              f"implies {list(want)}; fix config.json or the weights")
    if str(got_dtype) != dtype:
      raise HFConversionError(f"tensor {name} is {got_dtype} but the checkpoint's dtype is "
                              f"{dtype}; every tensor must have the config's dtype")


def from_hf(tensors: Mapping[str, np.ndarray],
            expected: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
  """HF state dict -> flat pregate params, proven complete first (`check_tensors`)."""
  check_tensors({n: (tuple(a.shape), str(a.dtype)) for n, a in tensors.items()}, expected)
  out = {}
  for name, arr in tensors.items():
    path, transposed = pregate_path(name)
    out[path] = np.ascontiguousarray(arr.T if transposed else arr)
  return out


def _few(names: list[str], n: int = 3) -> str:
  shown = ", ".join(sorted(names)[:n])
  return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _hint(names: list[str]) -> str:
  """Name the unsupported feature behind unexpected tensors (one clause)."""
  text = " ".join(names)
  for needle, what in ((r"\.(q|k)_norm\.", "q/k norms are not supported"),
                       (r"\.mlp\.\w+\.bias", "MLP biases are not supported"),
                       (r"\.o_proj\.bias", "o_proj biases are not supported"),
                       (r"lm_head\.bias", "an lm_head bias is not supported"),
                       (r"\.(q|k|v)_proj\.bias", "q/k/v biases need model_type qwen2")):
    if re.search(needle, text):
      return what
  return "only Llama/Qwen2 decoder tensors are supported"


def interleaved_to_half(w: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
  """Permute the output rows of an HF-oriented q/k weight [n_heads*head_dim, ...] from the
  interleaved RoPE layout (pairs 2j, 2j+1) to the half-split one (pairs j, j + head_dim/2),
  as transformers' convert_llama_weights_to_hf `permute` does. pregate never needs it."""
  rest = w.shape[1:]
  return (w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2)
          .reshape(n_heads * head_dim, *rest))


def signature(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
  """The configured model's parameter signature (shapes only; nothing allocated)."""
  from models.params import abstract_model, param_shapes
  return param_shapes(abstract_model(cfg))
