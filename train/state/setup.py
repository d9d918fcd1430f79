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
from train.state import layout, sharding
from train.state import step as step_lib


def _sds(x: Any, s: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)


@dataclasses.dataclass
class TrainSetup:
  """The configured model's static graph, abstract state and shardings on a mesh.

  `graphdef`, `abstract` and `shardings` are the training layout (scanned layers stacked,
  train/state/layout.py); `stored_*` the per-layer layout every checkpoint holds (the same
  objects without scanned layers). `targets()` are restore targets in the stored layout;
  `to_train` / `to_stored` convert a state or its params exactly.
  """

  model_cfg: ModelConfig
  graphdef: nnx.GraphDef
  init: Any
  abstract: step_lib.TrainState
  shardings: step_lib.TrainState
  mesh: jax.sharding.Mesh
  stored_graphdef: nnx.GraphDef
  stored_abstract: step_lib.TrainState
  stored_shardings: step_lib.TrainState
  stacked: bool  # the training layout stacks the blocks (model.scan_layers on this platform)
  _converters: dict[tuple[str, str], Any] = dataclasses.field(default_factory=dict, repr=False)

  @classmethod
  def build(cls, model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int,
            mesh: jax.sharding.Mesh) -> TrainSetup:
    def layout(stacked: bool) -> tuple[Any, Any, Any, Any]:
      graphdef, init = step_lib.init_fn(model_cfg, tx, seed, stacked)
      abstract = jax.eval_shape(init)
      specs = sharding.param_specs(abstract_model(model_cfg, stacked), mesh)
      return graphdef, init, abstract, sharding.state_shardings(abstract, specs, tx, mesh)

    stacked = model_cfg.layers_scanned()
    graphdef, init, abstract, shardings = train = layout(stacked)
    stored = layout(False) if stacked else train
    return cls(model_cfg, graphdef, init, abstract, shardings, mesh, stored[0], stored[2],
               stored[3], stacked)

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
    """The stored layout's parameter paths, shapes and dtypes (what a checkpoint holds)."""
    return param_shapes(abstract_model(self.model_cfg))

  def abstract_state(self) -> step_lib.TrainState:
    """The whole state as ShapeDtypeStructs carrying the mesh's shardings (AOT lowering)."""
    return jax.tree.map(_sds, self.abstract, self.shardings)

  def targets(self) -> tuple[Any, Any]:
    """Abstract restore targets (stored layout) carrying the current mesh's shardings."""
    params = jax.tree.map(_sds, self.stored_abstract.params, self.stored_shardings.params)
    opt = jax.tree.map(_sds, self.stored_abstract.opt_state, self.stored_shardings.opt_state)
    return params, opt

  def fresh_state(self) -> step_lib.TrainState:
    """Initialize directly sharded: each device materializes only its shards."""
    return jax.jit(self.init, out_shardings=self.shardings)()

  def to_train(self, tree: Any) -> Any:
    """A restored TrainState or params tree (stored layout) -> the training layout, on the
    training shardings (the identity without scanned layers)."""
    return self._convert("train", tree) if self.stacked else tree

  def to_stored(self, tree: Any) -> Any:
    """A TrainState or params tree (training layout) -> the stored layout: a copy, what a
    checkpoint and its fingerprint take (the identity without scanned layers)."""
    return self._convert("stored", tree) if self.stacked else tree

  def _convert(self, to: str, tree: Any) -> Any:
    """One jitted conversion per direction and part, compiled once per setup."""
    part = "state" if isinstance(tree, step_lib.TrainState) else "params"
    key = (to, part)
    if key not in self._converters:
      abstract, shardings = ((self.abstract, self.shardings) if to == "train"
                             else (self.stored_abstract, self.stored_shardings))
      if part == "params":
        abstract, shardings = abstract.params, shardings.params
      n = self.model_cfg.n_layers
      fn = ((lambda t: layout.stack(t, abstract, n)) if to == "train"
            else (lambda t: layout.unstack(t, abstract)))
      self._converters[key] = jax.jit(fn, out_shardings=shardings)
    return self._converters[key](tree)
