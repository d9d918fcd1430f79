"""Scanned layers' training layout, and the exact conversions at its edges.

With `model.scan_layers` the training state holds each block parameter, and each optimizer
moment that tracks one, stacked on a leading layer axis (`blocks/attn/wq/kernel` [L, d, d]).
The compiled step then holds one block and a dozen parameter leaves however deep the model,
so its compile time is flat in depth. Stacking inside the step instead (the first design)
left one slice per layer and parameter in the backward and the optimizer: compile time grew
3x from 4 to 32 layers (BUILD_NOTES, scanned layers).

Everything that leaves the step keeps the stored layout `blocks/<i>/...`: checkpoints, their
array signature and fingerprint, evaluation, export. So nothing on disk changed, and a
checkpoint restores across the switch. The conversions are copies (stack, index), placed at
the edges: stored -> training after a restore or `--init`, training -> stored before a save.
They work on any tree whose parameter subtrees follow the params' paths (a TrainState, its
params, its shardings), matching leaves by path: `.../blocks/<i>/rest` <-> `.../blocks/rest`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax.tree_util import DictKey

_BLOCKS = DictKey("blocks")
Path = tuple[Any, ...]


def _flat(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> dict[Path, Any]:
  return dict(jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0])


def _blocks_index(path: Path) -> int | None:
  return path.index(_BLOCKS) if _BLOCKS in path else None


def stack(tree: Any, target: Any, n_layers: int,
          combine: Callable[[Sequence[Any]], Any] = jnp.stack,
          is_leaf: Callable[[Any], bool] | None = None) -> Any:
  """A stored-layout tree -> the training layout of `target` (a tree of that structure):
  each `.../blocks/rest` leaf is `combine` of the n_layers leaves `.../blocks/<i>/rest`."""
  flat = _flat(tree, is_leaf)
  paths, treedef = jax.tree_util.tree_flatten_with_path(target, is_leaf=is_leaf)
  leaves = []
  for path, _ in paths:
    k = _blocks_index(path)
    if k is None:
      leaves.append(flat[path])
    else:
      head, rest = path[:k + 1], path[k + 1:]
      leaves.append(combine([flat[(*head, DictKey(i), *rest)] for i in range(n_layers)]))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def unstack(tree: Any, target: Any, take: Callable[[Any, int], Any] = lambda x, i: x[i],
            is_leaf: Callable[[Any], bool] | None = None) -> Any:
  """A training-layout tree -> the stored layout of `target`: each `.../blocks/<i>/rest`
  leaf is `take(leaf .../blocks/rest, i)`."""
  flat = _flat(tree, is_leaf)
  paths, treedef = jax.tree_util.tree_flatten_with_path(target, is_leaf=is_leaf)
  leaves = []
  for path, _ in paths:
    k = _blocks_index(path)
    if k is None:
      leaves.append(flat[path])
    else:
      layer = path[k + 1].key
      leaves.append(take(flat[(*path[:k + 1], *path[k + 2:])], layer))
  return jax.tree_util.tree_unflatten(treedef, leaves)
