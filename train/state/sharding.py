"""Device mesh, logical-axis rules, and the shardings of every array the run holds.

The model names each parameter dimension logically (`embed`, `mlp`, `heads`, ...); rules map
those names to mesh axes (`data`, `fsdp`, `tensor`). Batches are split over (`data`, `fsdp`);
parameters and optimizer moments over `fsdp` (ZeRO-3 style) and `tensor` (Megatron-style).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from core.errors import ConfigError
from models.config import ModelConfig

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("vocab", "tensor"), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
    ("kv_heads", "tensor"), ("norm", None))


def mesh_shape(mesh_cfg: ConfigDict, n_devices: int) -> tuple[int, ...]:
  """Resolve one -1 axis to 'the rest' and check the product equals the device count."""
  sizes = [int(mesh_cfg[a]) for a in AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f"mesh {dict(zip(AXES, sizes))}: at most one axis may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh {dict(zip(AXES, sizes))}: sizes must be positive or -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % known:
      raise ConfigError(f"mesh {dict(zip(AXES, sizes))} cannot fill {n_devices} devices: "
                        f"{known} does not divide {n_devices}; fix --config.mesh.*")
    sizes[sizes.index(-1)] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ConfigError(f"mesh {dict(zip(AXES, sizes))} has {math.prod(sizes)} devices but "
                      f"{n_devices} are present; make the product of --config.mesh.* equal "
                      f"{n_devices} (or set one axis to -1)")
  return tuple(sizes)


def check_divisibility(shape: Sequence[int], global_batch: int, grad_accum: int,
                       n_heads: int, n_kv_heads: int, eval_batch: int = 0) -> None:
  """Refuse meshes the model or batch cannot be split over, before anything compiles."""
  sizes = dict(zip(AXES, shape))
  batch_ways = sizes["data"] * sizes["fsdp"]
  micro = global_batch // max(grad_accum, 1)
  if micro % batch_ways:
    raise ConfigError(f"microbatch {micro} (global_batch {global_batch} / grad_accum "
                      f"{grad_accum}) is not divisible by data x fsdp = {batch_ways}; "
                      f"change batch.global_batch or the mesh")
  if eval_batch % batch_ways:
    raise ConfigError(f"eval.batch_size={eval_batch} is not divisible by data x fsdp = "
                      f"{batch_ways}; change eval.batch_size or the mesh")
  for name, heads in (("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
    if heads % sizes["tensor"]:
      raise ConfigError(f"model.{name}={heads} is not divisible by mesh.tensor="
                        f"{sizes['tensor']}; pick a tensor size dividing both head counts")


def run_mesh_shape(config: ConfigDict, model_cfg: ModelConfig, n_devices: int
                   ) -> tuple[int, ...]:
  """The config's mesh over n_devices, refused (ConfigError) unless the run's train and eval
  batches and its head counts split over it."""
  shape = mesh_shape(config.mesh, n_devices)
  b = config.batch
  check_divisibility(shape, b.global_batch, b.grad_accum, model_cfg.n_heads,
                     model_cfg.n_kv_heads, config.eval.batch_size or b.global_batch)
  return shape


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Auto axis types: the Explicit default breaks gathers such as the embedding lookup."""
  if devices is None:
    return jax.make_mesh(tuple(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))
  return Mesh(np.asarray(devices).reshape(tuple(shape)), AXES,
              axis_types=(AxisType.Auto,) * len(AXES))


def _spec_for(names: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
              rules: dict[str, str | None]) -> P:
  """Map logical names to mesh axes; a dimension the axis does not divide stays unsplit."""
  if not names:
    return P()
  out, used = [], set()
  for name, dim in zip(names, shape):
    axis = rules.get(name) if name else None
    if axis is None or axis in used or dim % mesh.shape[axis] or mesh.shape[axis] == 1:
      out.append(None)
    else:
      out.append(axis)
      used.add(axis)
  return P(*out)


def param_specs(abstract_model: Any, mesh: Mesh,
                rules: Sequence[tuple[str, str | None]] = DEFAULT_RULES) -> dict[str, Any]:
  """Pure-dict tree of PartitionSpecs matching `nnx.to_pure_dict(nnx.state(model))`."""
  rule_map = dict(rules)
  state = nnx.state(abstract_model)

  def spec(var: Any) -> P:
    names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
    return _spec_for(names, var.get_value().shape, mesh, rule_map)

  specs = jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(specs)


def state_shardings(abstract_state: Any, p_specs: dict[str, Any], tx: optax.GradientTransformation,
                    mesh: Mesh) -> Any:
  """NamedShardings for a TrainState: params by their rules, optimizer moments the same as the
  parameter they track, scalars (step, counts) replicated."""
  to_named = lambda s: NamedSharding(mesh, s)
  params = jax.tree.map(to_named, p_specs, is_leaf=lambda x: isinstance(x, P))
  opt = optax.tree_map_params(
      tx, lambda _, s: s, abstract_state.opt_state, params,
      transform_non_params=lambda _: replicated(mesh))
  return type(abstract_state)(replicated(mesh), params, opt)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def abstract_batch(batch_cfg: ConfigDict, mesh: Mesh, extra: Sequence[str] = ()
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The train step's global batch as sharded shapes, to lower the step ahead of time;
  `extra`: the packed-document arrays the run's batches carry (train/data/documents.py)."""
  shape = (batch_cfg.global_batch, batch_cfg.seq_len)
  return {k: jax.ShapeDtypeStruct(shape, np.int32, sharding=batch_sharding(mesh))
          for k in ("inputs", "targets", *extra)}


def describe(mesh: Mesh) -> str:
  return " x ".join(f"{a}={mesh.shape[a]}" for a in AXES) + f" ({mesh.size} devices)"
