"""Loss-spike skipping inside the compiled step, without a host sync (guard.spike_*).

A step whose loss or gradient norm exceeds the mean of the recent history by more than
`sigma` standard deviations leaves parameters and optimizer moments exactly as they were, the
way OLMo-core's skip-step optimizers judge it (a rolling interval of 128 steps, 6 standard
deviations, judged once half the interval is filled; non-finite history values are left out of
the statistics, a non-finite current value always exceeds). The history is a ring buffer held
in the optimizer state as one more link of the optax chain, which changes no update: so it is
checkpointed, replicated over the mesh, restored and resumed bitwise with the moments, with no
new item in the checkpoint. Only the steps that were applied enter the history (OLMo-core also
keeps the skipped ones): a spike then never raises the bar for the spike after it, so a window
of bad batches is skipped batch after batch. A lasting shift of the loss keeps skipping, which
is what the host's rollback watches for (train/run/recovery.py), and what it stops on after
guard.max_rollbacks.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class SpikeHistory(NamedTuple):
  """The last `window` losses and gradient norms (a ring buffer) and how many were pushed."""
  losses: jax.Array  # float32 [window]
  grad_norms: jax.Array  # float32 [window]
  count: jax.Array  # int32 []


def history(window: int) -> optax.GradientTransformation:
  """An optax link that passes updates through unchanged and keeps the spike history in the
  optimizer state (last in the chain: `make_optimizer`)."""
  def init(params: Any) -> SpikeHistory:
    del params
    zeros = jnp.zeros((max(window, 1),), jnp.float32)
    return SpikeHistory(zeros, zeros, jnp.zeros((), jnp.int32))

  def update(updates: Any, state: SpikeHistory, params: Any = None) -> tuple[Any, SpikeHistory]:
    del params
    return updates, state

  return optax.GradientTransformation(init, update)


def find(opt_state: Any) -> SpikeHistory | None:
  """The spike history of an optimizer state built by `make_optimizer` (None without one)."""
  if isinstance(opt_state, tuple) and opt_state and isinstance(opt_state[-1], SpikeHistory):
    return opt_state[-1]
  return None


def replace(opt_state: tuple, new: SpikeHistory) -> tuple:
  return (*opt_state[:-1], new)


def _exceeds(values: jax.Array, filled: jax.Array, current: jax.Array, sigma: float
             ) -> jax.Array:
  """Whether `current` lies above mean + sigma * std of the filled, finite history values
  (sample standard deviation; fewer than two such values: never)."""
  ok = filled & jnp.isfinite(values)
  n = jnp.sum(ok)
  mean = jnp.sum(jnp.where(ok, values, 0.0)) / jnp.maximum(n, 1)
  var = jnp.sum(jnp.where(ok, (values - mean) ** 2, 0.0)) / jnp.maximum(n - 1, 1)
  current = jnp.where(jnp.isfinite(current), current, jnp.inf)
  return (n >= 2) & (current > mean + sigma * jnp.sqrt(var))


def judge(hist: SpikeHistory, loss: jax.Array, grad_norm: jax.Array, window: int,
          sigma: float) -> jax.Array:
  """bool []: this step is a spike (judged only once half the window is filled)."""
  filled = jnp.arange(window) < jnp.minimum(hist.count, window)
  armed = hist.count >= max(2, window // 2)
  loss, grad_norm = loss.astype(jnp.float32), grad_norm.astype(jnp.float32)
  return armed & (_exceeds(hist.losses, filled, loss, sigma)
                  | _exceeds(hist.grad_norms, filled, grad_norm, sigma))


def push(hist: SpikeHistory, loss: jax.Array, grad_norm: jax.Array, window: int,
         spike: jax.Array) -> SpikeHistory:
  """The history with this step's values written over the oldest, unless it was a spike."""
  i = hist.count % window
  new = SpikeHistory(hist.losses.at[i].set(loss.astype(jnp.float32)),
                     hist.grad_norms.at[i].set(grad_norm.astype(jnp.float32)), hist.count + 1)
  return jax.tree.map(lambda old, n: jnp.where(spike, old, n), hist, new)
