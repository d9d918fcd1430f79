"""The training loop: set up once, then step, evaluate, log and checkpoint at named edges.

The hot path is one AOT-compiled step; everything with side effects (metrics, eval, saves)
happens at the loop's edges (`train.run.edges`), and the host reads step k's metrics only after
dispatching step k+1, so the device never waits for Python.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import shutil
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging

from core.errors import CheckpointError, DiskSpaceError, NonFiniteLossError
from core.jsonio import write_json_atomic
from gates import arch_match, chinchilla
from train.ckpt import fingerprint, metadata, resume
from train.ckpt.checkpointer import Checkpointer
from train.data import pipeline
from train.data.tokenizer import tokenizer_from_json
from train.report import records, summary
from train.run import guards, measure
from train.run import teacher as teacher_lib
from train.run import workdir as workdir_lib
from train.run.edges import EvalTracker, MetricsPipe, Signals, Termination, ThroughputWindow, is_due
from train.run.metrics_log import MetricsLog, format_line
from train.run.preflight import Plan
from train.run.profiling import StepProfiler
from train.run.setup import RunData, RunSetup, open_data
from train.run.tensorboard import TensorBoardSink
from train.runtime import host_memory
from train.state import flops, sharding
from train.state import step as step_lib
from train.state.setup import TrainSetup


@dataclasses.dataclass
class Seams:
  """Injection points for fault tests; a normal run leaves every one at its default."""

  disk_usage: Callable[[str], Any] = shutil.disk_usage
  checkpoint_fault: Callable[[int], None] | None = None  # before each save; may raise OSError
  after_record: Callable[[dict[str, Any]], None] | None = None  # after each metrics record


@dataclasses.dataclass
class RunResult:
  termination: str
  step: int
  val_loss: float | None
  best_val_loss: float | None



class _Edges:
  """The run's mutable state and the work done at its edges (eval, log line, save)."""

  def __init__(self, config: Any, rs: RunSetup, plan: Plan, started: _Started,
               log: MetricsLog, seams: Seams):
    self.config, self.rs, self.log, self.seams = config, rs, log, seams
    self.state, self.it, self.checkpointer = started.state, started.it, started.checkpointer
    self.run_meta, self.eval_set, prev = started.run_meta, started.eval_set, started.resumed
    self.tokenizer = tokenizer_from_json(self.run_meta.tokenizer)  # its probe, at each save
    b = config.batch
    self.tokens_per_step = b.global_batch * b.seq_len
    self.pipe = MetricsPipe(guards.NonFiniteGuard(config.optimizer.skip_nonfinite,
                                                  int(prev.nonfinite_skipped or 0)))
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
        fingerprint=fingerprint.compute(stored.params, self.rs.model_cfg,
                                        tokenizer=self.tokenizer))
    t = time.perf_counter()
    try:
      self.checkpointer.save(step, stored.params, stored.opt_state, self.it, meta, loss)
    except OSError as e:  # A failed write (or an earlier async one) stops as one typed line.
      raise _write_error(e, self.checkpointer.directory, step) from None
    self.save_s += time.perf_counter() - t
    self.log.write({"event": "save", "step": step, "blocking_s": time.perf_counter() - t})

  def close_checkpointer(self, step: int) -> None:
    try:
      self.checkpointer.close()
    except OSError as e:
      raise _write_error(e, self.checkpointer.directory, step) from None


@dataclasses.dataclass
class _Started:
  state: Any
  it: pipeline.ResumableIterator
  checkpointer: Checkpointer
  run_meta: metadata.Metadata
  resumed: metadata.Metadata  # the resumed checkpoint's (an empty record: a fresh or --init run)
  eval_set: list[Any]
  records: list[dict[str, Any]]  # metrics records of the start (the step-0 check), not yet logged


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
  if resume.has_steps(ckpt_dir):
    checkpointer = open_ckpt()
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
    records = _step0_check(loaded, source, data.val, lambda bs: rs.eval_loss(
        state.params, [rs.to_global(b) for b in bs]), plan.model_cfg.dtype,
        strict_data=resumed is not None)
  run_meta = metadata.run_record(
      config=config.to_dict(), model_cfg=plan.model_cfg, counts=plan.counts, tokenizer=tok,
      signature=rs.state.expected_signature(), manifest=data.manifest,
      gate=plan.verdict.to_dict(), eval_batches=eval_desc,
      mesh={a: int(rs.mesh.shape[a]) for a in sharding.AXES}, changes=plan.changes,
      sources=data.sources, distill=distill, packing=data.packing)
  return _Started(state, it, checkpointer or open_ckpt(), run_meta,
                  resumed or metadata.Metadata(), eval_global, records)


def run(config: Any, workdir: str, plan: Plan, *, stop_after: int = 0, init: str = "",
        seams: Seams | None = None) -> RunResult:
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
  rs = RunSetup.for_run(config, plan.model_cfg, workdir, data)  # the teacher, then compile
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
                   on_write=_sinks(tb.write, seams.after_record))
  log.write_gate(plan.verdict)
  tb.write_config(config.to_dict(), step=start)
  log.write({"event": "start", "step": start, "compile_s": rs.compile_s})
  for record in s.records:
    log.write(record)
  _log_start(config, plan, rs, start)
  step, last, termination = start, config.train_steps, Termination.COMPLETED
  e = _Edges(config, rs, plan, s, log, seams)
  with Signals(s.checkpointer) as signals, _record_failure(log, s.checkpointer, lambda: step), \
      StepProfiler(config.logging.profile_steps, last, workdir, is_main) as profiler:
    while step < last:
      step += 1
      profiler.before(step)
      e.state, metrics = rs.step_for(step)(e.state, rs.to_global(next(s.it)))
      profiler.after(step, e.state)
      e.pipe.push(step, metrics)
      e.window.step()
      e.window.pause()
      is_eval = is_due(step, config.eval.eval_every, last)
      is_log = is_due(step, config.logging.log_every, last)
      m = e.pipe.read() if is_log or is_eval else None
      if is_eval:
        e.eval_edge(step)
      if is_log:
        e.log_edge(step, m)
      preempt = signals.stop_at(step) or (stop_after and step - start >= stop_after)
      if is_eval and e.tracker.should_stop:
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
  result = _finish(log, step, termination, e.tracker, e.window.elapsed(), is_main)
  tb_dir = tb.directory if tb.enabled else None
  tb.close()
  if is_main:
    print(summary.build(records.load(workdir), termination=termination.value,
                        compile_s=rs.compile_s, eval_s=e.eval_s,
                        steps_s=e.window.elapsed() - e.eval_s - e.save_s,
                        wall_s=time.perf_counter() - run_t0, workdir=workdir,
                        checkpoint_dir=s.checkpointer.directory,
                        tensorboard_dir=tb_dir), flush=True)
  return result


def _sinks(*sinks: Callable[[dict[str, Any]], None] | None
           ) -> Callable[[dict[str, Any]], None]:
  """One metrics-record callback that feeds every given sink in order."""
  live = [s for s in sinks if s is not None]
  return lambda record: [sink(record) for sink in live] and None


def _log_start(config: Any, plan: Plan, rs: RunSetup, start: int) -> None:
  v, counts, train_steps = plan.verdict, plan.counts, config.train_steps
  peak, peak_src = flops.device_peak(plan.model_cfg.dtype)
  logging.info("N = %s parameters (%s non-embedding); D = %s planned tokens (D/N = %s, %s)",
               f"{counts.total:,}", f"{counts.non_embedding:,}", f"{v.tokens:,}",
               chinchilla.ratio_text(v.tokens, v.n_params), v.zone)
  logging.info("mesh: %s; compile %.2fs; peak %.1f TFLOP/s/device (%s); start step %d/%d; "
               "malloc: %s", sharding.describe(rs.mesh), rs.compile_s, peak / 1e12, peak_src,
               start, train_steps, host_memory.describe())
  if jax.process_index() == 0:
    logging.info("%s", measure.start_line(config, start, rs.compile_s))
    if rs.teacher is not None:
      logging.info("%s", teacher_lib.start_line(rs.teacher, config, flops.flops_per_token(
          plan.model_cfg, counts.total, config.batch.seq_len)))


def _finish(log: MetricsLog, step: int, termination: Termination, tracker: EvalTracker,
            elapsed: float, is_main: bool) -> RunResult:
  val, best = tracker.val_loss, tracker.best
  log.write({"event": "end", "step": step, "termination": termination.value, "val_loss": val,
             "best_val_loss": best, "elapsed_s": elapsed})
  if is_main:
    logging.info("%s at step %d: final val loss %s (best %s)", termination.value, step,
                 "n/a" if val is None else f"{val:.4f}", "n/a" if best is None else f"{best:.4f}")
    print(f"final val loss: {'n/a' if val is None else f'{val:.4f}'} "
          f"(step {step}, {termination.value})", flush=True)
  log.close()
  return RunResult(termination.value, step, val, best)


@contextlib.contextmanager
def _record_failure(log: MetricsLog, checkpointer: Checkpointer,
                    step_fn: Callable[[], int]) -> Iterator[None]:
  """A guard failure ends the run with its reason recorded; in-flight saves of good states
  still commit before the error propagates."""
  try:
    yield
  except (NonFiniteLossError, DiskSpaceError, CheckpointError) as e:
    log.write({"event": "end", "step": step_fn(), "termination": Termination.of_error(e).value,
               "error": str(e)})
    try:
      checkpointer.close()
    except Exception as close_err:  # pylint: disable=broad-except
      logging.warning("an in-flight checkpoint write failed too: %s", close_err)
    log.close()
    raise


def _write_error(err: OSError, directory: str, step: int) -> Exception:
  """A full disk or quota is a DiskSpaceError (exit 4); any other write failure a
  CheckpointError. Either way the last complete checkpoint is what a re-run resumes from."""
  if err.errno in (errno.ENOSPC, errno.EDQUOT):
    return DiskSpaceError(
        f"checkpoint step {step} could not be written under {directory} ({err.strerror}); "
        f"free disk space, then re-run the same command to resume from the last complete "
        f"checkpoint")
  return CheckpointError(
      f"checkpoint step {step} could not be written under {directory} ({err}); fix the "
      f"filesystem, then re-run the same command to resume from the last complete checkpoint")


def _step0_check(meta: metadata.Metadata, source: str, val_arr: pipeline.TokenArray,
                 eval_loss: Callable[[list], float], compute_dtype: str,
                 strict_data: bool) -> list[dict[str, Any]]:
  """Before the first step: restored params must reproduce the recorded val loss on the very
  batches that produced it, or the run stops (InitEvalMismatchError); -> the record to log."""
  recorded, desc = meta.val_loss, meta.eval_batches
  if recorded is None or not desc:
    logging.warning("step-0 check skipped for %s: no recorded val loss", source)
    return []
  try:
    batches = pipeline.reproduce_eval_batches(
        val_arr, desc, process_index=jax.process_index(), process_count=jax.process_count())
  except pipeline.DataError as err:
    if strict_data:
      raise
    logging.warning("step-0 check skipped for %s: %s", source, err)
    return []
  measured = eval_loss(batches)
  diff = arch_match.check_init_eval(source, recorded, measured, compute_dtype)
  logging.info("step-0 check passed for %s: val loss %.6f vs recorded %.6f", source, measured,
               recorded)
  return [{"event": "step0_check", "source": source, "recorded": recorded,
           "measured": measured, "abs_diff": diff}]


def _maybe_float(value: Any) -> float | None:
  """A device metric as a float, None where the step does not compute it (weight_norms off)."""
  return None if value is None else float(value)
