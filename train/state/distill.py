"""Distillation's pure pieces: the frozen teacher as the step sees it, and the mixed loss.

The teacher's parameters are a third, read-only argument of the one jitted train step (never
part of the TrainState, so they have no gradients, no optimizer state and are never
checkpointed with the student); they keep the shardings their restore gave them on the run's
mesh. The teacher's forward runs in its own compute dtype (its ModelConfig) under
`stop_gradient`, inside the step's activation-sharding scope, microbatch by microbatch with
grad_accum. Loading and checking a teacher is train/run/teacher.py's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from flax import nnx

from models.config import ModelConfig
from models.loss import cross_entropy, distill_kl
from models.transformer import packed

Params = dict[str, Any]
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Distill:
  """What the train step needs to distill: the teacher's static graph and the loss weights."""

  teacher_graphdef: nnx.GraphDef
  alpha: float  # weight of the KL term; 0 = ordinary training (the teacher runs nowhere)
  temperature: float

  @property
  def active(self) -> bool:
    return self.alpha != 0


@dataclasses.dataclass
class Teacher:
  """A loaded, validated teacher on the run's mesh (train.run.teacher.load builds it)."""

  model_cfg: ModelConfig
  graphdef: nnx.GraphDef
  params: Params
  n_params: int
  record: dict[str, Any]  # its identity, as checkpoint metadata records it

  @property
  def shardings(self) -> Any:
    return jax.tree.map(lambda x: x.sharding, self.params)

  def abstract(self) -> Any:
    """The parameters as ShapeDtypeStructs with their shardings (AOT lowering)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        self.params)

  def param_bytes(self) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(self.params))


def make_loss_fn(graphdef: nnx.GraphDef, distill: Distill
                 ) -> Callable[[Params, Batch, Params], tuple[jax.Array, dict[str, jax.Array]]]:
  """(1 - alpha) * cross-entropy + alpha * KL(teacher ‖ student) at the temperature (times τ²);
  -> (loss, {"ce", "kl"}). Full [B, T, V] logits of both models (model.loss_chunk is not used
  on this path: the KL needs every logit of both)."""
  alpha, temperature = float(distill.alpha), float(distill.temperature)

  def loss_fn(params: Params, batch: Batch, teacher_params: Params
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    logits = nnx.merge(graphdef, params)(batch["inputs"], **packed(batch))
    ce = cross_entropy(logits, batch["targets"])
    teacher = nnx.merge(distill.teacher_graphdef, jax.lax.stop_gradient(teacher_params))
    # The teacher reads the documents as the student does (one at a time when masked).
    teacher_logits = jax.lax.stop_gradient(teacher(batch["inputs"], **packed(batch)))
    kl = distill_kl(logits, teacher_logits, temperature)
    return (1.0 - alpha) * ce + alpha * kl, {"ce": ce, "kl": kl}

  return loss_fn


class BoundStep:
  """A compiled distillation step with the teacher's parameters bound, called as
  (state, batch) like the ordinary step; everything else (as_text, cost_analysis,
  memory_analysis) is the compiled step's own."""

  def __init__(self, compiled: Any, teacher_params: Params):
    self.compiled, self.teacher_params = compiled, teacher_params

  def __call__(self, state: Any, batch: Batch) -> Any:
    return self.compiled(state, batch, self.teacher_params)

  def __getattr__(self, name: str) -> Any:
    return getattr(self.compiled, name)
