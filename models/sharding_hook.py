"""A hook through which the trainer pins activation shardings, without models/ knowing meshes.

The model calls `constrain(x, logical_names)` at the embedding and block boundaries. Outside
`activation_constraints(fn)` that is the identity; inside it (entered by the trainer while it
traces a step on a mesh) `fn` maps the logical names to a sharding constraint. Without such
constraints XLA's propagation chose embedding-sharded activations under FSDP and resharded
them with all-to-alls around every block.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Sequence

import jax

Constraint = Callable[[jax.Array, Sequence[str | None]], jax.Array]
_HOOK: contextvars.ContextVar[Constraint | None] = contextvars.ContextVar(
    "activation_constraint", default=None)

# Logical activation axes: `batch` (split like the data), `length`, `act_embed` (model width).
BLOCK_BOUNDARY = ("batch", "length", "act_embed")


@contextlib.contextmanager
def activation_constraints(fn: Constraint | None) -> Iterator[None]:
  """Trace the model with `fn` applied at every `constrain` call (None: no constraints)."""
  token = _HOOK.set(fn)
  try:
    yield
  finally:
    _HOOK.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None] = BLOCK_BOUNDARY) -> jax.Array:
  fn = _HOOK.get()
  return x if fn is None else fn(x, names)
