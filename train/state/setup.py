"""The configured model's training state on a mesh: static graph, abstract state, shardings.

Everything that needs the state's shape or placement without holding arrays (restore targets,
the jitted step's in/out shardings, the expected parameter signature) comes from here, so the
loop, the benchmark, resume and evaluation all agree on one layout.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from flax import nnx

from models.config import ModelConfig
from models.params import abstract_model, param_shapes
from train.state import sharding
from train.state import step as step_lib


def _sds(x: Any, s: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)


@dataclasses.dataclass
class TrainSetup:
  """The configured model's static graph, abstract state and shardings on a mesh."""

  model_cfg: ModelConfig
  graphdef: nnx.GraphDef
  init: Any
  abstract: step_lib.TrainState
  shardings: step_lib.TrainState
  mesh: jax.sharding.Mesh

  @classmethod
  def build(cls, model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int,
            mesh: jax.sharding.Mesh) -> TrainSetup:
    graphdef, init = step_lib.init_fn(model_cfg, tx, seed)
    abstract = jax.eval_shape(init)
    specs = sharding.param_specs(abstract_model(model_cfg), mesh)
    shardings = sharding.state_shardings(abstract, specs, tx, mesh)
    return cls(model_cfg, graphdef, init, abstract, shardings, mesh)

  def jit_step(self, train_step: Any, teacher_shardings: Any = None) -> Any:
    """jit a pure step with the state's shardings on BOTH sides: left to XLA, outputs such as
    norm scales came back split over fsdp and the second call was refused. A distillation
    step's third argument, the teacher's parameters, keeps `teacher_shardings` (not donated)."""
    batch = sharding.batch_sharding(self.mesh)
    extra = () if teacher_shardings is None else (teacher_shardings,)
    return jax.jit(train_step, in_shardings=(self.shardings, batch, *extra),
                   out_shardings=(self.shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0)

  def expected_signature(self) -> dict[str, tuple[tuple[int, ...], str]]:
    return param_shapes(abstract_model(self.model_cfg))

  def abstract_state(self) -> step_lib.TrainState:
    """The whole state as ShapeDtypeStructs carrying the mesh's shardings (AOT lowering)."""
    return jax.tree.map(_sds, self.abstract, self.shardings)

  def targets(self) -> tuple[Any, Any]:
    """Abstract restore targets carrying the current mesh's shardings."""
    params = jax.tree.map(_sds, self.abstract.params, self.shardings.params)
    opt = jax.tree.map(_sds, self.abstract.opt_state, self.shardings.opt_state)
    return params, opt

  def fresh_state(self) -> step_lib.TrainState:
    """Initialize directly sharded: each device materializes only its shards."""
    return jax.jit(self.init, out_shardings=self.shardings)()
