"""Scanned layers' training layout, and the exact conversions at its edges.

With `model.scan_layers` the training state holds each block parameter, and each optimizer
moment that tracks one, stacked on a leading layer axis (`blocks/attn/wq/kernel` [L, d, d]).
The compiled step then holds one block and a dozen parameter leaves however deep the model,
so its compile time is flat in depth. Stacking inside the step instead (the first design)
left one slice per layer and parameter in the backward and the optimizer: compile time grew
4.8x from 4 to 32 layers (docs/benchmarks.md).

Everything that leaves the step keeps the stored layout `blocks/<i>/...`: checkpoints, their
array signature and fingerprint, evaluation, export. So nothing on disk changed, and a
checkpoint restores across the switch. The conversions are copies (stack, index), placed at
the edges: stored -> training after a restore or `--init`, training -> stored before a save.
Both work on a TrainState or its params, matching leaves by path:
`.../blocks/<i>/rest` (stored) <-> `.../blocks/rest` (training), whether under `params` or
under an optimizer moment that mirrors them.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.tree_util import DictKey

_BLOCKS = DictKey("blocks")
Path = tuple[Any, ...]


def _rebuild(tree: Any, target: Any, leaf_at: Callable[[dict[Path, Any], Path, int], Any]
             ) -> Any:
  """`target`'s structure, each leaf `leaf_at(tree's leaves by path, path, index of 'blocks'
  in path)`, or the same path's leaf of `tree` where the path has no 'blocks'."""
  flat = dict(jax.tree_util.tree_flatten_with_path(tree)[0])
  paths, treedef = jax.tree_util.tree_flatten_with_path(target)
  leaves = [flat[path] if _BLOCKS not in path else leaf_at(flat, path, path.index(_BLOCKS))
            for path, _ in paths]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def stack(tree: Any, target: Any, n_layers: int) -> Any:
  """A stored-layout tree -> the training layout of `target` (a tree of that structure):
  each `.../blocks/rest` leaf stacks the n_layers leaves `.../blocks/<i>/rest`."""
  def layers(flat: dict[Path, Any], path: Path, k: int) -> jax.Array:
    return jnp.stack([flat[(*path[:k + 1], DictKey(i), *path[k + 1:])]
                      for i in range(n_layers)])
  return _rebuild(tree, target, layers)


def unstack(tree: Any, target: Any) -> Any:
  """A training-layout tree -> the stored layout of `target`: each `.../blocks/<i>/rest`
  leaf is layer i of `.../blocks/rest`."""
  def layer(flat: dict[Path, Any], path: Path, k: int) -> jax.Array:
    return flat[(*path[:k + 1], *path[k + 2:])][path[k + 1].key]
  return _rebuild(tree, target, layer)
