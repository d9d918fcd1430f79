"""Model construction and exact parameter counts from the abstract model.

Counting uses `nnx.eval_shape`: shapes only, no arrays allocated, nothing compiled, so the
Chinchilla gate can run before the first XLA compile.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from flax import nnx

from models.config import ModelConfig
from models.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  total: int
  embedding: int

  @property
  def non_embedding(self) -> int:
    return self.total - self.embedding

  def to_dict(self) -> dict[str, int]:
    return {"total": self.total, "non_embedding": self.non_embedding,
            "embedding": self.embedding}


@functools.lru_cache(maxsize=16)
def abstract_model(cfg: ModelConfig, stacked: bool = False) -> Transformer:
  """The model with ShapeDtypeStruct leaves; the Rngs is made inside the trace (no compile).
  Per-layer blocks (the stored layout) unless `stacked` (scanned layers' training layout).
  Made once per configuration (tracing the constructor is ~0.1 s, and a run asks five times):
  callers read it (shapes, graphdef, specs) and never change it."""
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0), stacked=stacked))


def param_shapes(model: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """Flat 'a/b/c' path -> (shape, dtype name) for every nnx.Param of a real or abstract model."""
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  out = {}
  for path, var in flat:
    leaf = var.get_value() if hasattr(var, "get_value") else var
    out["/".join(str(p) for p in path)] = (tuple(leaf.shape), str(leaf.dtype))
  return out


def _is_embedding(path: str, cfg: ModelConfig) -> bool:
  # Token embedding always; an untied LM head is the output embedding (Kaplan et al. 2020).
  return path == "embed" or (not cfg.tie_embeddings and path.startswith("lm_head/"))


def count_params(cfg: ModelConfig) -> ParamCounts:
  """Exact total and embedding parameter counts of the configured model."""
  shapes = param_shapes(abstract_model(cfg))
  total = sum(math.prod(s) for s, _ in shapes.values())
  embedding = sum(math.prod(s) for p, (s, _) in shapes.items() if _is_embedding(p, cfg))
  return ParamCounts(total=total, embedding=embedding)

