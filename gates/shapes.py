"""Concrete model shapes of pregate's family (pre-norm Llama: RMSNorm, RoPE, GQA, SwiGLU) for a
parameter target, so a planner's N becomes config overrides ready to paste.

The count is closed-form (the search tries thousands of shapes; models.params.count_params
builds an abstract model per call), and tests hold it equal to count_params, which is how the
gate counts. Width/depth follow common practice, not a law: head_dim 16..128 growing with width,
GQA with 4 query heads per KV head from 8 heads up, d_ff ~ 8/3 d_model rounded up (Llama), and a
width/depth ratio growing from ~24 at 1e5 parameters to 128 from ~1e10 (nanoGPT's 128/4, GPT-2's
768/12, Llama's 4096/32 and 8192/80 lie near it). Pure.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Iterator

from models.config import SIZE_FIELDS, ModelConfig

TOLERANCE = 0.04  # the largest miss from the target allowed while any shape meets it
ERROR_WEIGHT = 20.0  # 1% off the target costs as much as a 22% miss of the preferred aspect
_HINTS = typing.get_type_hints(ModelConfig)


# A shape is ModelConfig's size fields (declared there with `size=True`, in its order: `family`
# builds them positionally) and nothing else: the search sets them, the config keeps the rest.
_SizeFields = dataclasses.make_dataclass(
    "_SizeFields", [(name, _HINTS[name]) for name in SIZE_FIELDS], frozen=True)


@dataclasses.dataclass(frozen=True)
class Shape(_SizeFields):  # type: ignore[misc,valid-type]  # its fields are ModelConfig's
  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  def counts(self) -> tuple[int, int]:
    """(total, embedding) parameters, as models.params.count_params counts them."""
    d, hd = self.d_model, self.head_dim
    per_layer = (2 * d + d * self.n_heads * hd + 2 * d * self.n_kv_heads * hd
                 + self.n_heads * hd * d + 3 * d * self.d_ff)
    embedding = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return embedding + self.n_layers * per_layer + d, embedding

  @property
  def n_params(self) -> int:
    return self.counts()[0]

  def model_fields(self) -> dict[str, int | bool]:
    return {name: getattr(self, name) for name in SIZE_FIELDS}

  def overrides(self) -> list[str]:
    """`--config.model.x=v` flags for this shape."""
    return [f"--config.model.{k}={v}" for k, v in self.model_fields().items()]


def target_aspect(n_params: float) -> float:
  """Preferred d_model / n_layers for a model of n_params (see module docstring)."""
  return min(128.0, max(16.0, 32.0 * (n_params / 1e6) ** 0.15))


def _head_dim(d_model: int) -> int:
  return 128 if d_model >= 2048 else 64 if d_model >= 512 else 32 if d_model >= 128 else 16


def _ff_multiple(d_model: int) -> int:
  return 16 if d_model < 256 else 64 if d_model < 1024 else 256


def family(d_model: int, n_layers: int, vocab_size: int, tie_embeddings: bool = True,
           d_ff: int | None = None) -> Shape:
  """The family's shape of width d_model and depth n_layers (d_ff ~ 8/3 d_model by default)."""
  n_heads = max(1, d_model // _head_dim(d_model))
  n_kv = n_heads // 4 if n_heads >= 8 and n_heads % 4 == 0 else n_heads
  multiple = _ff_multiple(d_model)
  if d_ff is None:
    d_ff = -(-(8 * d_model) // (3 * multiple)) * multiple
  return Shape(vocab_size, d_model, n_layers, n_heads, n_kv, d_ff, tie_embeddings)


def _widths() -> Iterator[int]:
  # Steps keep n_heads a multiple of 4 from 512 up, so GQA groups divide it.
  for lo, hi, step in ((32, 128, 16), (128, 512, 32), (512, 2048, 256), (2048, 32768, 512)):
    yield from range(lo, hi, step)


def _candidates(n_params: float, d: int, aspect: float, vocab_size: int, tie: bool
                ) -> Iterator[Shape]:
  """Depths near the preferred aspect and near the count, each with the default d_ff and with
  d_ff solved (in [2, 4] x d_model) to land on n_params: d_ff is the fine knob of small models."""
  one = family(d, 1, vocab_size, tie)
  per_layer = family(d, 2, vocab_size, tie).n_params - one.n_params
  fixed = one.n_params - per_layer
  by_count = (n_params - fixed) / per_layer
  by_aspect = d / aspect
  depths = {max(1, f(x)) for x in (by_count, by_aspect) for f in (math.floor, math.ceil)}
  multiple = _ff_multiple(d)
  for n_layers in depths:
    yield family(d, n_layers, vocab_size, tie)
    ff_params = (n_params - fixed - n_layers * (per_layer - 3 * d * one.d_ff)) / (3 * d * n_layers)
    ff = round(ff_params / multiple) * multiple
    if 2 * d <= ff <= 4 * d:
      yield family(d, n_layers, vocab_size, tie, d_ff=ff)


def shape_for(n_params: float, vocab_size: int, tie_embeddings: bool = True,
              n_max: int | None = None) -> Shape:
  """The family shape with the best mix of closeness to n_params, to the preferred aspect and
  to d_ff = 8/3 d_model (within TOLERANCE of n_params if any shape is), never above n_max."""
  if not n_params > 0:
    raise ValueError(f"n_params must be > 0, got {n_params!r}")
  aspect = target_aspect(n_params)
  best: list[tuple[tuple, Shape]] = []
  for d in _widths():
    for shape in _candidates(n_params, d, aspect, vocab_size, tie_embeddings):
      if n_max is not None and shape.n_params > n_max:
        continue
      error = abs(shape.n_params - n_params) / n_params
      misfit = abs(math.log(d / shape.n_layers / aspect))
      ff_misfit = abs(math.log(3 * shape.d_ff / (8 * d)))
      best.append(((error > TOLERANCE, misfit + ff_misfit + ERROR_WEIGHT * error), shape))
  if not best:
    raise ValueError(f"no shape of the family has at most {n_max:,} parameters with vocab "
                     f"{vocab_size:,}")
  return min(best, key=lambda item: item[0])[1]
