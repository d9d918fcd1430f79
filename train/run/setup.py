"""What a run builds before its first step, built here for `train.main`, `pregate-bench` and
`pregate-plan --measure` alike: the data (prepared once, cached), the mesh, a distillation run's
teacher, the training state's layout, the train iterator, the AOT-compiled step and the jitted
eval step, and the timing of steps and saves. So the benchmark and the forecast time exactly
the step that trains.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import tempfile
import time
from typing import Any, Iterator

import jax
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from core.errors import DataError
from core.paths import data_dirs
from gates import config_sanity
from models.config import ModelConfig
from train.data import datasets, documents, pipeline, store
from train.data.tokenizer import Tokenizer, tokenizer_from_json
from train.run import teacher as teacher_lib
from train.run.edges import is_due
from train.runtime import distributed, platform
from train.state import sharding
from train.state import step as step_lib
from train.state.distill import BoundStep, Distill, Teacher
from train.state.setup import TrainSetup


@dataclasses.dataclass
class RunData:
  manifest: dict[str, Any]
  tokenizer: Tokenizer
  train: pipeline.TokenSet
  val: pipeline.TokenSet
  sources: dict[str, dict[str, Any]]  # per source: weight, planned/unique tokens, epochs
  packing: pipeline.Packing = documents.PLAIN  # data.document_* as resolved for this data

  def unique_tokens(self) -> dict[str, int]:
    """{source: unique train tokens} as prepared (what the gate's effective tokens need)."""
    name = os.path.basename(str(self.manifest.get("source_path") or "corpus"))
    return {name: int(self.manifest["train_tokens"])}


def open_data(config: ConfigDict, workdir: str, model_cfg: ModelConfig) -> RunData:
  """Prepare (once, cached) and open the train/val token sets (one prepared dir or a mixture
  of sources); check the tokenizer fits the model; log each source's planned tokens."""
  dcfg = config.data
  data_dir, val_dir = data_dirs(dcfg, workdir)
  if jax.process_index() == 0:  # One writer; the others read what it wrote (shared FS).
    manifest = datasets.ensure(dcfg.to_dict(), data_dir, model_cfg.vocab_size)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("pregate:data_prepared")
    manifest = store.load_manifest(data_dir)
  tokenizer = tokenizer_from_json(manifest["tokenizer"])
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise DataError(
        f"tokenizer vocabulary has {tokenizer.vocab_size} symbols but model.vocab_size="
        f"{model_cfg.vocab_size}; set --config.model.vocab_size={tokenizer.vocab_size}")
  train_arr = pipeline.open_split(data_dir, "train")
  val_arr = pipeline.open_split(val_dir, "val")
  need = config.batch.seq_len + 1
  train_arr.require(need, "training windows of batch.seq_len + 1 tokens")
  val_arr.require(need, "validation windows of batch.seq_len + 1 tokens")
  b = config.batch
  sources = datasets.source_plan(manifest, steps=config.train_steps,
                                 global_batch=b.global_batch, seq_len=b.seq_len,
                                 seed=config.seed)
  packing = documents.resolve(dcfg.document_masking, dcfg.document_positions,
                              train_arr.documents)
  if jax.process_index() == 0:
    for line in datasets.plan_lines(sources):
      logging.info("%s", line)
    logging.info("%s", packing_line(train_arr, config, packing))
  return RunData(manifest, tokenizer, train_arr, val_arr, sources, packing)


def packing_line(train: pipeline.TokenSet, config: ConfigDict, packing: pipeline.Packing) -> str:
  """The start-up (and plan) line on packed documents, measured on the first training batch."""
  if not packing.mask:
    return documents.report_line(packing, None)
  b = config.batch
  first = pipeline.BatchSource(train, global_batch=b.global_batch, seq_len=b.seq_len,
                               seed=config.seed, num_batches=1, packing=packing)[0]
  return documents.report_line(packing, documents.report(first[documents.SEGMENT_IDS]))


@dataclasses.dataclass
class RunSetup:
  """The mesh, state layout, optimizer and compiled steps of one run."""

  config: ConfigDict
  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  state: TrainSetup
  tx: optax.GradientTransformation
  batch_sharding: jax.sharding.NamedSharding
  compiled: Any  # the AOT-compiled train step: (TrainState, batch) -> (TrainState, metrics)
  compile_s: float
  eval_fn: Any  # jitted (params, batch) -> mean loss of the batch
  teacher: Teacher | None = None  # a distillation run's frozen teacher (bound into `compiled`)
  # The same step plus parameter and update norms, run on log steps only (logging.weight_norms;
  # otherwise `compiled` itself). Its parameters are bitwise those of `compiled`.
  compiled_log: Any = None
  packing: pipeline.Packing = documents.PLAIN  # the batches' segment arrays

  def step_for(self, step: int) -> Any:
    """The compiled step that produces step `step` (1-based): the norms on log steps."""
    c = self.config
    return self.compiled_log if is_due(step, c.logging.log_every, c.train_steps) \
        else self.compiled

  @classmethod
  def for_run(cls, config: ConfigDict, model_cfg: ModelConfig, workdir: str, data: RunData
              ) -> RunSetup:
    """The run's set-up on its opened `data`: the mesh, the configured teacher restored onto it
    (train.run.teacher.load: verified, checked against the prepared tokenizer) and checked
    against the teacher `workdir`'s checkpoints record, all before the step compiles; then
    `build`."""
    mesh = run_mesh(config, model_cfg)
    teacher = teacher_lib.load(config, model_cfg, workdir, data.tokenizer, mesh)
    teacher_lib.check_workdir(workdir, teacher_lib.run_record(config, teacher))
    return cls.build(config, model_cfg, teacher, mesh, data.packing)

  @classmethod
  def build(cls, config: ConfigDict, model_cfg: ModelConfig, teacher: Teacher | None = None,
            mesh: jax.sharding.Mesh | None = None,
            packing: pipeline.Packing = documents.PLAIN) -> RunSetup:
    """The state layout and the compiled step on the run's mesh (`run_mesh` unless given),
    lowered on abstract shapes (with the segment arrays of `packing`). With a `teacher` (on
    this mesh) the step distills from it."""
    mesh = run_mesh(config, model_cfg) if mesh is None else mesh
    tx, schedule = step_lib.make_optimizer(config), step_lib.lr_schedule(config)
    state = TrainSetup.build(model_cfg, tx, config.seed, mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    b = config.batch
    t0 = time.perf_counter()
    distill = None if teacher is None else Distill(
        teacher.graphdef, float(config.distill.alpha), float(config.distill.temperature))
    batch = sharding.abstract_batch(b, mesh, packing.keys())
    extra = () if teacher is None else (teacher.abstract(),)

    def lower_step(weight_norms: bool) -> Any:
      step_fn = state.jit_step(step_lib.make_train_step(
          state.graphdef, tx, schedule, b.grad_accum,
          skip_nonfinite=config.optimizer.skip_nonfinite > 0, mesh=mesh, distill=distill,
          weight_norms=weight_norms, spike_window=config.guard.spike_window,
          spike_sigma=config.guard.spike_sigma), None if teacher is None else teacher.shardings)
      return step_fn.lower(state.abstract_state(), batch, *extra)

    def bind(compiled: Any) -> Any:  # A teacher's params are bound in: called (state, batch).
      return compiled if teacher is None else BoundStep(compiled, teacher.params)

    # Traced one after the other (Python), compiled side by side: XLA's compile releases the
    # GIL, so the log-step variant's compile can use the other core (a cold start only; a
    # cached one loads both, train/runtime/compile_cache.py).
    lowered = [lower_step(False)] + ([lower_step(True)] if config.logging.weight_norms else [])
    with concurrent.futures.ThreadPoolExecutor(len(lowered)) as pool:
      done = [bind(c) for c in pool.map(lambda low: low.compile(), lowered)]
    compiled, compiled_log = done[0], done[-1]
    compile_s = time.perf_counter() - t0
    # Eval in microbatches no larger than the training microbatch, which is known to fit.
    micro = step_lib.eval_microbatches(config.eval.batch_size or b.global_batch,
                                       b.global_batch // b.grad_accum,
                                       int(mesh.shape["data"] * mesh.shape["fsdp"]))
    eval_fn = jax.jit(step_lib.make_eval_step(state.graphdef, micro, mesh=mesh),
                      in_shardings=(state.shardings.params, batch_sharding))
    return cls(config, model_cfg, mesh, state, tx, batch_sharding, compiled, compile_s,
               eval_fn, teacher, compiled_log, packing)

  def to_global(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of a batch -> one global array per key, split over the mesh."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, x), batch)

  def train_iter(self, tokens: pipeline.TokenSet, num_batches: int
                 ) -> pipeline.ResumableIterator:
    b = self.config.batch
    skips = config_sanity.batch_windows(self.config.data.skip_batches)
    # Skipped windows (configured, or added by a rollback) push the last batch further out;
    # batch i is a function of (seed, i) for any i, so the bound only has to be high enough.
    extra = sum(last - first + 1 for first, last in skips) + num_batches
    return pipeline.make_train_iter(
        tokens, global_batch=b.global_batch, seq_len=b.seq_len, seed=self.config.seed,
        num_batches=num_batches + extra, process_index=jax.process_index(),
        process_count=jax.process_count(), packing=self.packing, skips=skips)

  def time_steps(self, state: Any, it: Any, warmup: int, steps: int
                 ) -> tuple[Any, list[float]]:
    """(state after, seconds per step) over `steps` steps after `warmup` untimed ones, timed as
    the loop runs them: next batch read and placed, step dispatched, the previous step's
    metrics read, so host work between steps counts too."""
    step = int(jax.device_get(state.step))
    for _ in range(warmup):
      step += 1
      state, _m = self.step_for(step)(state, self.to_global(next(it)))
    jax.block_until_ready(state)
    times, prev = [], None
    for _ in range(steps):
      t = time.perf_counter()
      step += 1
      state, m = self.step_for(step)(state, self.to_global(next(it)))
      if prev is not None:
        float(prev["loss"])
      prev = m
      times.append(time.perf_counter() - t)
    jax.block_until_ready(state)
    return state, times

  def time_save(self, checkpointer: Any, state: Any, it: Any, step: int, meta: Any,
                loss: float | None = None) -> tuple[float, float]:
    """(blocking seconds, seconds until written) of one save of `state` with the metadata
    `meta`, as the loop saves it: converted to the stored layout (a copy), then handed to the
    checkpointer."""
    t = time.perf_counter()
    stored = self.state.to_stored(state)
    checkpointer.save(step, stored.params, stored.opt_state, it, meta, loss)
    blocking = time.perf_counter() - t
    checkpointer.wait()
    return blocking, time.perf_counter() - t

  def eval_loss(self, params: Any, batches: list[dict[str, jax.Array]]) -> float:
    """Mean loss over equal-size global batches (the loop's reduction, also at step 0)."""
    return float(np.mean(jax.device_get([self.eval_fn(params, b) for b in batches])))


def run_mesh(config: ConfigDict, model_cfg: ModelConfig) -> jax.sharding.Mesh:
  """The mesh over every device (refused before compile if the run cannot split over it)."""
  return sharding.make_mesh(sharding.run_mesh_shape(config, model_cfg, jax.device_count()))


@dataclasses.dataclass
class ScratchRun:
  """The run's own set-up in a throwaway workdir (what bench and --measure time)."""

  model_cfg: ModelConfig
  workdir: str
  data: RunData
  rs: RunSetup
  setup_s: float  # opening (preparing) the data, the teacher and the set-up, compile included


@contextlib.contextmanager
def scratch_run(config: ConfigDict, prefix: str = "tmp") -> Iterator[ScratchRun]:
  """A single-process run's set-up (platform checked, data prepared afresh unless
  data.data_dir is set, teacher, compiled steps) in a temporary workdir, removed on exit."""
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  platform.check(model_cfg)  # what this host cannot run: one line, before the data
  distributed.split_cpu_cores(config, model_cfg, multi_process=False)
  with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
    t = time.perf_counter()
    data = open_data(config, tmp, model_cfg)
    rs = RunSetup.for_run(config, model_cfg, tmp, data)
    yield ScratchRun(model_cfg, tmp, data, rs, time.perf_counter() - t)
