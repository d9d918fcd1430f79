"""Activation sharding constraints for a mesh: the trainer's side of `models.sharding_hook`.

Logical activation names map through the same rules as the parameters (`train.sharding`),
plus `batch` -> (data, fsdp), the axes the input batch is split over. At block boundaries the
activations are batch-split and replicated over `tensor` (Megatron-style), whatever the
parameters' FSDP split: XLA then all-gathers FSDP weights instead of resharding activations.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from models.sharding_hook import Constraint
from train.state.sharding import BATCH_AXES, DEFAULT_RULES


def activation_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, str | tuple[str, ...] | None]] = DEFAULT_RULES
                    ) -> P:
  """Mesh axes per dimension; an axis of size 1, already used, or not dividing the dimension
  is dropped (the dimension stays unsplit along it)."""
  rule_map = {**dict(rules), "batch": BATCH_AXES}
  out, used = [], set()
  for name, dim in zip(names, shape):
    axes = rule_map.get(name) if name else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
    if axes and dim % math.prod(mesh.shape[a] for a in axes) == 0:
      used.update(axes)
      out.append(axes if len(axes) > 1 else axes[0])
    else:
      out.append(None)
  return P(*out)


def mesh_constraint(mesh: Mesh | None) -> Constraint | None:
  """The constraint function for `activation_constraints`; None without a multi-device mesh."""
  if mesh is None or mesh.size == 1:
    return None

  def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, activation_spec(names, x.shape, mesh)))

  return constrain
