"""The hot path: optimizer, state init, and the pure train/eval steps (state in, state out).

The model's graph is split once into a static GraphDef and a pure-dict parameter tree; the step
merges them inside `jax.jit`, so there is no per-step NNX graph traversal in Python and the
state buffers can be donated. Given the run's mesh, the steps pin activation shardings at the
embedding and block boundaries (`train.activation_sharding`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from models.config import ModelConfig
from models.loss import chunked_cross_entropy, cross_entropy
from models.params import abstract_model
from models.sharding_hook import activation_constraints
from models.transformer import Transformer, packed
from train.state import distill as distill_lib
from train.state import spikes
from train.state.activation_sharding import mesh_constraint
from train.state.distill import Distill

Params = dict[str, Any]
Batch = dict[str, jax.Array]


class TrainState(NamedTuple):
  step: jax.Array
  params: Params
  opt_state: optax.OptState


def lr_schedule(config: ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to lr, then cosine decay to lr * min_lr_ratio at decay_steps."""
  sched, opt = config.schedule, config.optimizer
  decay_steps = sched.decay_steps or config.train_steps
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.lr, warmup_steps=sched.warmup_steps,
      decay_steps=max(decay_steps, sched.warmup_steps + 1),
      end_value=opt.lr * sched.min_lr_ratio)


def decay_mask(params: Params) -> Params:
  """Weight decay on projection matrices (`kernel`) only: never on norms, biases or the token
  embedding. By name, not ndim: stacked layers give norm scales a second axis."""
  def keep(path, _) -> bool:
    return getattr(path[-1], "key", None) == "kernel"
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(config: ConfigDict) -> optax.GradientTransformation:
  """Clip, AdamW, and (last, changing no update) the loss-spike history the step judges
  against (train/state/spikes.py), so that it is checkpointed and resumed with the moments."""
  opt = config.optimizer
  return optax.chain(
      optax.clip_by_global_norm(opt.grad_clip) if opt.grad_clip > 0 else optax.identity(),
      optax.adamw(lr_schedule(config), b1=opt.b1, b2=opt.b2, eps=opt.eps,
                  weight_decay=opt.weight_decay, mask=decay_mask),
      spikes.history(config.guard.spike_window))



def init_fn(model_cfg: ModelConfig, tx: optax.GradientTransformation, seed: int,
            stacked: bool | None = None) -> tuple[nnx.GraphDef, Callable[[], TrainState]]:
  """(graphdef, a no-argument function building the initial state) for jit or eval_shape.

  `stacked` (default: `model_cfg.layers_scanned()`): the training layout of scanned layers, block
  parameters on a leading layer axis (train/state/layout.py); its initial values equal the
  per-layer layout's. The Rngs is created inside the function so tracing it compiles nothing
  extra, and jitting it with out_shardings initializes every array directly on its devices.
  """
  stacked = model_cfg.layers_scanned() if stacked is None else stacked
  graphdef = nnx.graphdef(abstract_model(model_cfg, stacked))

  def init() -> TrainState:
    with nnx.use_eager_sharding(False):
      model = Transformer(model_cfg, rngs=nnx.Rngs(seed), stacked=stacked)
    params = nnx.to_pure_dict(nnx.state(model))
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  return graphdef, init


def stored_graphdef(model_cfg: ModelConfig) -> nnx.GraphDef:
  """The per-layer model's graph: what runs restored checkpoints (eval, fingerprint, teacher)."""
  return nnx.graphdef(abstract_model(model_cfg))


def make_loss_fn(graphdef: nnx.GraphDef) -> Callable[[Params, Batch], jax.Array]:
  """Mean next-token cross-entropy; with model.loss_chunk > 0 the logits are computed and
  consumed `loss_chunk` positions at a time, never all at once (models/loss.py)."""
  def loss_fn(params: Params, batch: Batch) -> jax.Array:
    model = nnx.merge(graphdef, params)
    if model.cfg.loss_chunk:
      return chunked_cross_entropy(model.hidden(batch["inputs"], **packed(batch)), model.head(),
                                   batch["targets"], model.cfg.loss_chunk)
    return cross_entropy(model(batch["inputs"], **packed(batch)), batch["targets"])
  return loss_fn


def split_microbatches(batch: Batch, n: int) -> Batch:
  """[B, ...] -> [n, B/n, ...], microbatch j = rows j, j+n, j+2n, ...

  Strided, not contiguous: a batch split over devices in contiguous row blocks then gives
  every device its own rows in every microbatch, so scanning the microbatches moves no data
  between devices (contiguous blocks put each device's rows in one microbatch).
  """
  return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1),
                      batch)


def eval_microbatches(eval_batch: int, train_microbatch: int, batch_ways: int = 1) -> int:
  """The fewest microbatches an eval batch splits into so that each is no larger than the
  training microbatch (global_batch / grad_accum, which is known to fit) and still splits
  evenly over the batch-parallel devices (data x fsdp)."""
  for n in range(1, eval_batch + 1):
    size, rest = divmod(eval_batch, n)
    if not rest and size <= train_microbatch and size % batch_ways == 0:
      return n
  return 1  # no even split (the mesh check refuses such an eval batch before this runs)


GradFn = Callable[[Params, Batch, Params | None],
                  tuple[tuple[jax.Array, dict[str, jax.Array]], Params]]


def in_place_after(norm: jax.Array, updates: Params) -> Params:
  """The updates times an exact 1.0 made at run time from `norm` (a norm is never negative,
  nor is NaN < 0): a data dependency, not arithmetic, so that the apply waits for the norm.

  Why it exists: XLA then reduces before it overwrites the donated parameters in place (without
  it XLA:CPU copied every weight-decayed matrix each step to keep the old values readable,
  +7-11% step time on the nanoGPT shape), and the steps with and without the weight norms apply
  their updates through the same dependency, so they round alike and any mix of them gives
  bitwise equal parameters (without it they differed by 1 ulp, FMA contraction; docs/benchmarks.md).
  """
  one = jnp.where(norm < 0, 0.0, 1.0)
  return jax.tree.map(lambda u: u * one.astype(u.dtype), updates)


def _loss_and_grads(graphdef: nnx.GraphDef, distill: Distill | None
                    ) -> tuple[GradFn, tuple[str, ...]]:
  """The step's loss and gradient, and its aux metric keys. Without an active teacher (none, or
  alpha = 0) it is exactly the ordinary loss's value and gradient: the teacher's parameters are
  not used and its forward is not traced."""
  if distill is not None and distill.active:
    return (jax.value_and_grad(distill_lib.make_loss_fn(graphdef, distill), has_aux=True),
            ("ce", "kl"))
  plain = jax.value_and_grad(make_loss_fn(graphdef))

  def grad_fn(params: Params, batch: Batch, teacher: Params | None):
    del teacher
    loss, grads = plain(params, batch)
    return (loss, {}), grads

  return grad_fn, ()


def _accumulated(grad_fn: GradFn, n: int, aux_keys: tuple[str, ...]) -> GradFn:
  """`grad_fn` averaged over n microbatches in a `lax.scan`: the memory of one microbatch, the
  result of the whole batch (equal-size microbatches, mean loss)."""
  def grads_of(params: Params, batch: Batch, teacher: Params | None):
    micro = split_microbatches(batch, n)

    def body(carry, mb):
      return jax.tree.map(jnp.add, carry, grad_fn(params, mb, teacher)), None

    f32 = lambda: jnp.zeros((), jnp.float32)
    zeros = ((f32(), {k: f32() for k in aux_keys}), jax.tree.map(jnp.zeros_like, params))
    out, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda g: g / n, out)

  return grads_of


def gradients(graphdef: nnx.GraphDef, grad_accum: int = 1, distill: Distill | None = None,
              mesh: Mesh | None = None) -> GradFn:
  """(params, batch, teacher params) -> ((loss, aux metrics), grads), over grad_accum
  microbatches, with activations pinned batch-split on the run's `mesh`."""
  grad_fn, aux_keys = _loss_and_grads(graphdef, distill)
  if grad_accum > 1:
    grad_fn = _accumulated(grad_fn, grad_accum, aux_keys)
  constraint = mesh_constraint(mesh)

  def pinned(params: Params, batch: Batch, teacher: Params | None):
    with activation_constraints(constraint):
      return grad_fn(params, batch, teacher)

  return pinned


class Update(NamedTuple):
  """An optimizer update applied: the new parameters and optimizer state, and the norms taken
  on the way (`update_norm` only when the step measures the weight norms)."""
  params: Params
  opt_state: optax.OptState
  grad_norm: jax.Array
  update_norm: jax.Array | None


def apply_update(tx: optax.GradientTransformation, state: TrainState, grads: Params,
                 measure: bool, grad_norm: jax.Array | None = None) -> Update:
  """One optimizer update, applied in place after a norm (`in_place_after`): the update norm
  when `measure`, else the gradient norm that every step takes anyway (`grad_norm` when the
  caller has taken it already)."""
  grad_norm = optax.tree.norm(grads) if grad_norm is None else grad_norm
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  update_norm = optax.tree.norm(updates) if measure else None
  updates = in_place_after(grad_norm if update_norm is None else update_norm, updates)
  return Update(optax.apply_updates(state.params, updates), opt_state, grad_norm, update_norm)


def is_finite(loss: jax.Array, new: Update, weigh_params: bool
              ) -> tuple[jax.Array, jax.Array | None]:
  """(whether the step is finite, the new parameters' norm if `weigh_params`). Finite loss and
  gradients can still overflow the weights (decay at a huge lr, grad 0 once the logits
  saturate): wherever the new parameters' norm is taken, it is part of the verdict."""
  finite = jnp.isfinite(loss) & jnp.isfinite(new.grad_norm)
  if not weigh_params:
    return finite, None
  param_norm = optax.tree.norm(new.params)
  return finite & jnp.isfinite(param_norm), param_norm


class ApplyAlways:
  """Every update is applied, finite or not; a non-finite step shows in its metrics and the
  host's guard (train/run/guards.py) stops the run."""

  weighs_params = False  # the verdict needs no parameter norm

  def keep(self, finite: jax.Array, new: Update, old: TrainState
           ) -> tuple[Params, optax.OptState]:
    return new.params, new.opt_state

  def skipped(self, finite: jax.Array) -> jax.Array:
    return jnp.zeros((), jnp.int32)

  def norm_metrics(self, finite: jax.Array, param_norm: jax.Array | None,
                   update_norm: jax.Array | None, old: TrainState) -> dict[str, jax.Array]:
    return _present(param_norm=param_norm, update_norm=update_norm)


class SkipNonFinite(ApplyAlways):
  """optimizer.skip_nonfinite: a step whose loss, gradient norm or new parameters' norm is
  NaN/Inf leaves params and optimizer state unchanged (metrics['skipped']), so a skipped step
  can never leave overflowed weights behind; its norms say it changed nothing."""

  weighs_params = True

  def keep(self, finite: jax.Array, new: Update, old: TrainState
           ) -> tuple[Params, optax.OptState]:
    return jax.tree.map(lambda a, b: jnp.where(finite, a, b),
                        (new.params, new.opt_state), (old.params, old.opt_state))

  def skipped(self, finite: jax.Array) -> jax.Array:
    return jnp.logical_not(finite).astype(jnp.int32)

  def norm_metrics(self, finite: jax.Array, param_norm: jax.Array | None,
                   update_norm: jax.Array | None, old: TrainState) -> dict[str, jax.Array]:
    return _present(
        param_norm=None if param_norm is None
        else jnp.where(finite, param_norm, optax.tree.norm(old.params)),
        update_norm=None if update_norm is None else jnp.where(finite, update_norm, 0.0))


def _present(**values: jax.Array | None) -> dict[str, jax.Array]:
  return {k: v for k, v in values.items() if v is not None}


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int = 1, skip_nonfinite: bool = False,
                    mesh: Mesh | None = None, distill: Distill | None = None,
                    weight_norms: bool = True, spike_window: int = 0, spike_sigma: float = 6.0
                    ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
  """A pure step: `gradients` -> `apply_update` -> `is_finite` -> the non-finite guard
  (`SkipNonFinite` with skip_nonfinite, else `ApplyAlways`) -> metrics.

  With `distill`, the step is (state, batch, teacher params) -> ... and the metrics carry the
  distillation loss's "ce" and "kl" terms (alpha = 0: the ordinary step). weight_norms adds the
  parameter and update norms to the metrics; the loop compiles it for log steps only (they cost
  ~3-4% of a small step, docs/benchmarks.md). Metrics are device values, read one step late.
  With spike_window > 0 (guard.spike_window; the optimizer state must hold the spike history,
  `make_optimizer`) a loss or gradient-norm spike leaves parameters and moments unchanged
  (metrics['spike']), decided inside the step: no host sync.
  """
  grads_of = gradients(graphdef, grad_accum, distill, mesh)
  guard = SkipNonFinite() if skip_nonfinite else ApplyAlways()
  weigh_params = weight_norms or guard.weighs_params

  def update(state: TrainState, loss: jax.Array, grads: Params, grad_norm: jax.Array | None
             ) -> tuple[Params, optax.OptState, dict[str, jax.Array]]:
    new = apply_update(tx, state, grads, weight_norms, grad_norm)
    finite, param_norm = is_finite(loss, new, weigh_params)
    params, opt_state = guard.keep(finite, new, state)
    return params, opt_state, {"grad_norm": new.grad_norm, "skipped": guard.skipped(finite),
                               **guard.norm_metrics(finite, param_norm, new.update_norm, state)}

  def hold(state: TrainState, loss: jax.Array, grad_norm: jax.Array
           ) -> tuple[Params, optax.OptState, dict[str, jax.Array]]:
    """The state unchanged, with the metrics `update` gives, saying it changed nothing: the
    parameters' norm, update norm 0."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return state.params, state.opt_state, {
        "grad_norm": grad_norm, "skipped": guard.skipped(finite),
        **_present(param_norm=optax.tree.norm(state.params) if weigh_params else None,
                   update_norm=jnp.zeros((), jnp.float32) if weight_norms else None)}

  def train_step(state: TrainState, batch: Batch, teacher: Params | None = None
                 ) -> tuple[TrainState, dict[str, jax.Array]]:
    (loss, aux), grads = grads_of(state.params, batch, teacher)
    if spike_window:
      params, opt_state, norms = _spike_guarded(update, hold, state, loss, grads,
                                                spike_window, spike_sigma)
    else:
      params, opt_state, norms = update(state, loss, grads, None)
    metrics = {"loss": loss, "lr": schedule(state.step), **aux, **norms}
    return TrainState(state.step + 1, params, opt_state), metrics

  return train_step


def _spike_guarded(update: Callable[..., Any], hold: Callable[..., Any], state: TrainState,
                   loss: jax.Array, grads: Params, window: int, sigma: float
                   ) -> tuple[Params, optax.OptState, dict[str, jax.Array]]:
  """`update`, or on a spike `hold` (the old parameters and optimizer state, whose values then
  stay out of the history: spikes.py), chosen by `lax.cond` before the update runs.

  Why a branch and not a select of old against new: the select kept the old moments alive
  beside the in-place update, so XLA copied every moment leaf each step (~12% of the
  nanoGPT-shaped CPU step, docs/benchmarks.md); a branch reads the old state only when it
  keeps it.
  """
  hist = spikes.find(state.opt_state)
  if hist is None:
    raise ValueError("guard.spike_window > 0 needs the spike history in the optimizer state "
                     "(train.state.step.make_optimizer)")
  grad_norm = optax.tree.norm(grads)
  spike = spikes.judge(hist, loss, grad_norm, window, sigma)
  params, opt_state, norms = jax.lax.cond(
      spike, lambda _: hold(state, loss, grad_norm),
      lambda _: update(state, loss, grads, grad_norm), None)
  opt_state = spikes.replace(opt_state, spikes.push(hist, loss, grad_norm, window, spike))
  return params, opt_state, {**norms, "spike": spike.astype(jnp.int32)}


def make_eval_step(graphdef: nnx.GraphDef, microbatches: int = 1, mesh: Mesh | None = None
                   ) -> Callable[[Params, Batch], jax.Array]:
  """Mean loss of one batch; the caller averages equal-size batches.

  With microbatches > 1 the batch is evaluated in that many equal slices one after another
  (`lax.map`), so an eval batch as large as the global batch needs only a training
  microbatch's activation memory (see `eval_microbatches`); the mean is the same.
  """
  loss_fn = make_loss_fn(graphdef)
  constraint = mesh_constraint(mesh)

  def eval_step(params: Params, batch: Batch) -> jax.Array:
    with activation_constraints(constraint):
      if microbatches == 1:
        return loss_fn(params, batch)
      losses = jax.lax.map(lambda mb: loss_fn(params, mb), split_microbatches(batch, microbatches))
      return jnp.mean(losses)

  return eval_step
