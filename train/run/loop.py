"""The training loop: set up once, then step, evaluate, log and checkpoint at named edges.

The hot path is one AOT-compiled step; everything with side effects (metrics, eval, saves)
happens at the loop's edges (`train.run.edges`), and the host reads step k's metrics only after
dispatching step k+1, so the device never waits for Python.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from core.checks import first_line
from core.errors import NonFiniteLossError
from core.jsonio import write_json_atomic
from gates import chinchilla
from train.ckpt import fingerprint, metadata, resume
from train.ckpt.checkpointer import Checkpointer
from train.data import pipeline
from train.data.tokenizer import tokenizer_from_json
from train.report import records, summary
from train.run import bookends, guards, memory_check, recovery
from train.run import teacher as teacher_lib
from train.run import workdir as workdir_lib
from train.run.edges import EvalTracker, MetricsPipe, Signals, Termination, ThroughputWindow, is_due
from train.run.metrics_log import MetricsLog, format_line
from train.run.preflight import Plan
from train.run.profiling import StepProfiler
from train.run.setup import RunData, RunSetup, open_data
from train.run.tasks_edge import TaskEdge
from train.run.tensorboard import TensorBoardSink
from train.run.watchdog import Watchdog
from train.state import flops, sharding
from train.state import step as step_lib
from train.state.setup import TrainSetup


@dataclasses.dataclass
class Seams:
  """Injection points for fault tests; a normal run leaves every one at its default."""

  disk_usage: Callable[[str], Any] = shutil.disk_usage
  checkpoint_fault: Callable[[int], None] | None = None  # before each save; may raise OSError
  after_record: Callable[[dict[str, Any]], None] | None = None  # after each metrics record
  # (step, batch index, this process's rows) -> the rows the step trains on (poisoned data)
  batch: Callable[[int, int, dict[str, Any]], dict[str, Any]] | None = None
  before_step: Callable[[int], None] | None = None  # before each step's batch (a hang)
  watchdog_exit: Callable[[int], None] = os._exit  # how a hung run leaves


class _Edges:
  """The run's mutable state and the work done at its edges (eval, log line, save)."""

  def __init__(self, config: Any, rs: RunSetup, plan: Plan, started: _Started,
               log: MetricsLog, seams: Seams, tasks: TaskEdge):
    self.config, self.rs, self.log, self.seams, self.tasks = config, rs, log, seams, tasks
    self.state, self.it, self.checkpointer = started.state, started.it, started.checkpointer
    self.run_meta, self.eval_set, prev = started.run_meta, started.eval_set, started.resumed
    self.tokenizer = tokenizer_from_json(self.run_meta.tokenizer)  # its probe, at each save
    b = config.batch
    self.tokens_per_step = b.global_batch * b.seq_len
    self.recovery = started.recovery
    self.batch_of: dict[int, int] = {}  # step -> the batch index it trained on (recent steps)
    self.watchdog: Watchdog | None = None
    self.pipe = MetricsPipe(guards.NonFiniteGuard(config.optimizer.skip_nonfinite,
                                                  int(prev.nonfinite_skipped or 0)),
                            on_read=self._observe)
    self.pipe.spikes = int(prev.spikes_skipped or 0)
    self.tracker = EvalTracker(config.eval.early_stop_patience,
                               config.eval.early_stop_min_delta, prev.best_val_loss,
                               int(prev.evals_without_improvement or 0), prev.val_loss)
    self.window = ThroughputWindow(self.tokens_per_step)
    # Model FLOPs: the student's training step plus a distilling teacher's forward.
    self.flops_per_token = (flops.flops_per_token(plan.model_cfg, plan.counts.total, b.seq_len)
                            + teacher_lib.forward_flops_per_token(rs.teacher, config))
    self.peak_total = flops.device_peak(plan.model_cfg.dtype)[0] * jax.device_count()
    self.ckpt_bytes = guards.state_bytes((self.state.params, self.state.opt_state))
    self.eval_s = self.save_s = 0.0  # wall time spent at these edges (the run summary)

  def _observe(self, step: int, m: dict[str, Any]) -> str | None:
    if self.watchdog is not None:
      self.watchdog.completed(step)
    return self.recovery.observe(step, self.batch_of.pop(step, -1), float(m["loss"]),
                                 bool(m.get("spike", 0)))

  def next_batch(self, step: int) -> dict[str, Any]:
    """Step `step`'s global batch (through the fault seam), its index remembered."""
    if self.seams.before_step is not None:
      self.seams.before_step(step)
    batch = next(self.it)
    self.batch_of[step] = self.it.last_index
    if self.seams.batch is not None:
      batch = self.seams.batch(step, self.it.last_index, batch)
    return self.rs.to_global(batch)

  def roll_back(self, reason: str, restored: Any = None) -> int:
    """Carry out the pending (or a new) rollback (train/run/recovery.py); -> the step the loop
    continues after."""
    rec = self.recovery
    pending = rec.pending or rec.plan(rec.seen[-1].step, reason, self.checkpointer.steps())
    self.checkpointer.wait()
    recovery.set_aside_after(self.checkpointer, pending["to_step"])
    self.pipe.drop()
    tok = self.run_meta.tokenizer
    replay = recovery.Replay(
        restore=lambda c: resume.restore_step(self.rs.state, self.checkpointer, c, self.it, tok),
        step_fn=self.rs.step_for, next_batch=self.next_batch,
        copy=lambda st: jax.tree.map(jnp.copy, st))
    self.state, step, record = rec.execute(pending, replay, restored)
    if record["skipped_batches"]:
      self.it.skip(*record["skipped_batches"])
    self.batch_of.clear()
    self.log.write({"event": "rollback", "step": step, **record})
    return step

  def evaluate(self) -> float:
    t = time.perf_counter()
    loss = self.rs.eval_loss(self.state.params, self.eval_set)
    self.eval_s += time.perf_counter() - t
    return loss

  def eval_edge(self, step: int) -> None:
    self.tracker.update(self.evaluate())
    bpb = pipeline.bits_per_byte(self.tracker.val_loss, self.run_meta.eval_batches)
    self.log.write({"event": "eval", "step": step, "val_loss": self.tracker.val_loss,
                    "val_bpb": bpb, "best_val_loss": self.tracker.best})
    if jax.process_index() == 0 and bpb is not None:
      logging.info("eval step %d: val loss %.4f, val_bpb %.4f", step, self.tracker.val_loss, bpb)

  def log_edge(self, step: int, m: dict[str, Any]) -> None:
    tps, step_s = self.window.close()
    rec = {"event": "train", "step": step, "train_steps": self.config.train_steps,
           "loss": float(np.mean(self.pipe.losses)),
           "val_loss": self.tracker.val_loss, "grad_norm": float(m["grad_norm"]),
           "lr": float(m["lr"]), "param_norm": _maybe_float(m.get("param_norm")),
           "update_norm": _maybe_float(m.get("update_norm")), "skipped": self.pipe.guard.skipped,
           "spikes": self.pipe.spikes,
           "tokens_seen": step * self.tokens_per_step,
           "step_time_s": step_s, "tokens_per_s": tps,
           "model_tflops": tps * self.flops_per_token / 1e12,
           "mfu": tps * self.flops_per_token / self.peak_total,
           "elapsed_s": self.window.elapsed(),
           "eta_s": (self.config.train_steps - step) * step_s,
           **{k: float(np.mean(v)) for k, v in self.pipe.terms.items()}}  # distill: ce, kl
    self.pipe.losses.clear()
    self.pipe.terms.clear()
    self.log.write(rec)
    if jax.process_index() == 0:
      logging.info(format_line(rec))

  def save(self, step: int, loss: float | None, reason: str | None = None) -> None:
    self.pipe.read()  # A poisoned step raises here, before it can replace a good checkpoint.
    guards.check_disk(self.checkpointer.directory, self.ckpt_bytes,
                      disk_usage=self.seams.disk_usage)
    if loss is None:  # Every checkpoint records the val loss its params give (step-0 check).
      loss = self.evaluate()
    if not math.isfinite(loss):
      raise NonFiniteLossError(
          f"validation loss {loss} at step {step}: the parameters are poisoned and were not "
          f"saved; the last good checkpoint is intact. Lower optimizer.lr or raise warmup")
    stored = self.rs.state.to_stored(self.state)  # checkpoints keep blocks/<i>/... (layout.py)
    meta = metadata.save_record(
        self.run_meta, step=step, tokens_seen=step * self.tokens_per_step, val_loss=loss,
        best_val_loss=self.tracker.best, evals_without_improvement=self.tracker.bad_evals,
        nonfinite_skipped=self.pipe.guard.skipped, termination=reason,
        spikes_skipped=self.pipe.spikes, rollbacks=self.recovery.rollbacks,
        fingerprint=fingerprint.compute(stored.params, self.rs.model_cfg,
                                        tokenizer=self.tokenizer))
    t = time.perf_counter()
    try:
      self.checkpointer.save(step, stored.params, stored.opt_state, self.it, meta, loss)
    except OSError as e:  # A failed write (or an earlier async one) stops as one typed line.
      raise bookends.write_error(e, self.checkpointer.directory, step) from None
    self.save_s += time.perf_counter() - t
    self.log.write({"event": "save", "step": step, "blocking_s": time.perf_counter() - t})

  def close_checkpointer(self, step: int) -> None:
    try:
      self.checkpointer.close()
    except OSError as e:
      raise bookends.write_error(e, self.checkpointer.directory, step) from None


@dataclasses.dataclass
class _Started:
  state: Any
  it: pipeline.ResumableIterator
  checkpointer: Checkpointer
  run_meta: metadata.Metadata
  resumed: metadata.Metadata  # the resumed checkpoint's (an empty record: a fresh or --init run)
  eval_set: list[Any]
  records: list[dict[str, Any]]  # metrics records of the start (the step-0 check), not yet logged
  recovery: recovery.Recovery  # the run's rollbacks so far, and one a killed process left pending


def _warm_start(config: Any, workdir: str, plan: Plan, shape: tuple[int, int, int],
                init: str) -> tuple[Any, metadata.Metadata] | None:
  """`--init`'s parameters, restored and verified (signature, fingerprint) before the run
  writes anything (not even its data cache): None when there is no --init, or the workdir
  already holds checkpoints (the run resumes them instead)."""
  if not init:
    return None
  if resume.has_steps(os.path.join(workdir, "checkpoints")):
    logging.warning("resuming the run in %s; --init=%s applies only to a fresh run and is "
                    "ignored", workdir, init)
    return None
  setup = TrainSetup.build(plan.model_cfg, step_lib.make_optimizer(config), config.seed,
                           sharding.make_mesh(shape))
  return resume.init_params(setup, init)


def _start(config: Any, workdir: str, plan: Plan, data: RunData, rs: RunSetup,
           warm: tuple[Any, metadata.Metadata] | None, init: str, seams: Seams,
           distill: dict[str, Any] | None) -> _Started:
  """Iterator, the state (resumed, warm-started or fresh, each validated), eval batches, the
  step-0 check on a loaded state, the checkpointer and the run's metadata record (with the
  teacher a resumed run must still have). Writes nothing but the checkpoints dir of a fresh
  run (and renames damaged steps aside on resume)."""
  it = rs.train_iter(data.train, config.train_steps)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  open_ckpt = lambda: Checkpointer(
      ckpt_dir, keep=config.checkpoint.keep, keep_best=config.checkpoint.keep_best,
      async_save=config.checkpoint.async_save, fault_hook=seams.checkpoint_fault)
  tok = data.tokenizer.to_json()
  checkpointer, resumed = None, None
  rec = recovery.Recovery(config.guard, workdir, jax.process_index() == 0)
  for window in recovery.skipped_windows(rec.rollbacks):
    it.skip(*window)
  if resume.has_steps(ckpt_dir):
    checkpointer = open_ckpt()
    if rec.pending:  # killed mid-rollback: resume into the same one, from its target
      recovery.set_aside_after(checkpointer, rec.pending["to_step"])
    state, resumed = resume.restore_or_init(rs.state, checkpointer, it, tok)
    teacher_lib.check_resumed(f"checkpoint {ckpt_dir}/{int(state.step)}", resumed, distill)
  loaded, source = resumed, f"resume from {ckpt_dir}"
  if resumed is None and warm is not None:
    loaded = warm[1]
    state, source = resume.warm_state(rs.state, warm, init, tok, rs.tx), f"--init={init}"
  elif resumed is None:
    state = rs.state.fresh_state()
  eval_set, eval_desc = pipeline.eval_batches(
      data.val, batch_size=config.eval.batch_size or config.batch.global_batch,
      seq_len=config.batch.seq_len, n_batches=config.eval.eval_batches, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      token_bytes=data.tokenizer.token_bytes(), packing=data.packing)
  eval_global = [rs.to_global(b) for b in eval_set]
  records = []
  if loaded is not None:
    records = bookends.step0_check(loaded, source, data.val, lambda bs: rs.eval_loss(
        state.params, [rs.to_global(b) for b in bs]), plan.model_cfg.dtype,
        strict_data=resumed is not None)
  run_meta = metadata.run_record(
      config=config.to_dict(), model_cfg=plan.model_cfg, counts=plan.counts, tokenizer=tok,
      signature=rs.state.expected_signature(), manifest=data.manifest,
      gate=plan.verdict.to_dict(), eval_batches=eval_desc,
      mesh={a: int(rs.mesh.shape[a]) for a in sharding.AXES}, changes=plan.changes,
      sources=data.sources, distill=distill, packing=data.packing)
  return _Started(state, it, checkpointer or open_ckpt(), run_meta,
                  resumed or metadata.Metadata(), eval_global, records, rec)


def run(config: Any, workdir: str, plan: Plan, *, stop_after: int = 0, init: str = "",
        seams: Seams | None = None) -> bookends.RunResult:
  seams = seams or Seams()
  run_t0 = time.perf_counter()
  # Nothing is written until the state is loaded and proven: the mesh, the --init checkpoint
  # (before even the data cache), the data, a resumed checkpoint and the step-0 check may each
  # refuse, and a refused run must not claim the workdir (run.json) or log to it.
  shape = sharding.run_mesh_shape(config, plan.model_cfg, jax.device_count())
  warm = _warm_start(config, workdir, plan, shape, init)
  data = open_data(config, workdir, plan.model_cfg)
  if not plan.verdict.unique_tokens_known:  # e.g. a tokenizer trained by the preparation
    plan = dataclasses.replace(plan, verdict=chinchilla.enforce(
        chinchilla.recheck(plan.verdict, data.unique_tokens())))
  # The tasks' files read and the smoke task drawn from the val split, before compiling.
  task_edge = TaskEdge(config, data.val, data.tokenizer, plan.model_cfg.max_seq_len, workdir)
  rs = RunSetup.for_run(config, plan.model_cfg, workdir, data)  # the teacher, then compile
  memory_line = memory_check.check(config, plan.model_cfg, rs)  # refuses before step 1
  distill = teacher_lib.run_record(config, rs.teacher)
  s = _start(config, workdir, plan, data, rs, warm, init, seams, distill)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  start = int(s.state.step)
  if is_main:  # The run has really started: now it owns the workdir.
    write_json_atomic(os.path.join(workdir, "gate.json"), plan.verdict.to_dict())
    workdir_lib.record_owner(workdir, config.to_dict(), plan.verdict.to_dict(), plan.changes)
  tb = TensorBoardSink(workdir, enabled=is_main and config.logging.tensorboard,
                       start_step=start)
  log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), enabled=is_main,
                   on_write=bookends.sinks(tb.write, seams.after_record))
  log.write_gate(plan.verdict)
  tb.write_config(config.to_dict(), step=start)
  log.write({"event": "start", "step": start, "compile_s": rs.compile_s})
  for record in [*s.records, task_edge.publish(start, is_main)]:
    if record is not None:
      log.write(record)
  bookends.log_start(config, plan, rs, start, memory_line)
  step, last, termination = start, config.train_steps, Termination.COMPLETED
  e = _Edges(config, rs, plan, s, log, seams, task_edge)
  g = config.guard
  with Signals(s.checkpointer) as signals, \
      bookends.record_failure(log, s.checkpointer, lambda: step), \
      StepProfiler(config.logging.profile_steps, last, workdir, is_main) as profiler, \
      Watchdog(workdir, factor=g.watchdog_factor, floor_s=g.watchdog_floor_s,
               exit_on_hang=g.watchdog_exit, process_index=jax.process_index(),
               process_count=jax.process_count(), exit_fn=seams.watchdog_exit) as e.watchdog:
    if s.recovery.pending:
      step = e.roll_back("", restored=e.state)
    while step < last:
      step += 1
      batch = e.next_batch(step)
      e.watchdog.started(step)  # after the batch: a wedged data worker has not started its step
      profiler.before(step)
      e.state, metrics = rs.step_for(step)(e.state, batch)
      profiler.after(step, e.state)
      _, reason = _read(e, e.pipe.push, step, metrics)
      e.window.step()
      e.window.pause()
      is_eval = is_due(step, config.eval.eval_every, last)
      is_log = is_due(step, config.logging.log_every, last)
      m = None
      if is_log or is_eval:
        m, due = _read(e, e.pipe.read)
        reason = due or reason
      if reason:
        step = e.roll_back(reason)
        e.window.resume()
        continue
      if is_eval:
        e.eval_edge(step)
      scored = e.tasks.due(step, is_eval, last)
      if scored:
        log.write(e.tasks.score(step, e.state.params, rs))
      if is_log:
        e.log_edge(step, m)
      preempt = signals.stop_at(step) or (stop_after and step - start >= stop_after)
      if e.tasks.early_stop(is_eval and e.tracker.should_stop, scored):
        termination = Termination.EARLY_STOP
      elif preempt and step < last:
        termination = Termination.PREEMPTED
      if (termination == Termination.COMPLETED and step < last
          and step % config.checkpoint.save_every == 0):
        e.save(step, e.tracker.val_loss if is_eval else None)
      if termination != Termination.COMPLETED:
        break
      e.window.resume()
    if step > start:  # A resume of a finished run trains nothing and saves nothing.
      e.save(step, None if termination == Termination.PREEMPTED else e.tracker.val_loss,
             termination.value)
    e.close_checkpointer(step)
  result = bookends.finish(log, step, termination, e.tracker, e.window.elapsed(), is_main)
  tb_dir = tb.directory if tb.enabled else None
  tb.close()
  if is_main:
    print(summary.build(records.load(workdir), termination=termination.value,
                        compile_s=rs.compile_s, eval_s=e.eval_s,
                        steps_s=e.window.elapsed() - e.eval_s - e.save_s - e.tasks.seconds,
                        tasks_s=e.tasks.seconds,
                        wall_s=time.perf_counter() - run_t0, workdir=workdir,
                        checkpoint_dir=s.checkpointer.directory,
                        tensorboard_dir=tb_dir), flush=True)
  return result


def _read(e: _Edges, read: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
  """Read step metrics (`read(*args)`); -> (what it returned, the reason a rollback is due:
  spikes persist, or a non-finite step while rollbacks are on; else None)."""
  try:
    got = read(*args)
  except NonFiniteLossError as err:
    if not e.recovery.enabled or not e.recovery.seen:
      raise
    return None, f"non-finite step ({first_line(err, 120)})"
  due, e.pipe.due = e.pipe.due, None
  return got, due


def _maybe_float(value: Any) -> float | None:
  """A device metric as a float, None where the step does not compute it (weight_norms off)."""
  return None if value is None else float(value)
