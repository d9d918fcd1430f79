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
import signal
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging

from core.errors import CheckpointError, DiskSpaceError, NonFiniteLossError
from core.jsonio import write_json_atomic
from gates import arch_match, chinchilla
from train.ckpt import metadata, resume
from train.ckpt.checkpointer import Checkpointer
from train.data import pipeline
from train.run import guards
from train.run import workdir as workdir_lib
from train.run.edges import EvalTracker, MetricsPipe, Termination, ThroughputWindow, is_due
from train.run.metrics_log import MetricsLog, format_line
from train.run.preflight import Plan
from train.run.setup import RunData, RunSetup, open_data
from train.runtime import host_memory
from train.state import flops, sharding


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


class _Signals:
  """SIGTERM/SIGINT ask the loop to finish the current step, checkpoint and stop.

  Multi-process, the decision must be the same step on every process, so SIGTERM is left to
  JAX's preemption notifier and the loop asks the coordination service (orbax's
  `reached_preemption`) each step; only SIGINT is handled here.
  """

  def __init__(self, checkpointer: Checkpointer):
    self.requested = False
    self._old: dict[int, Any] = {}
    self._multi = jax.process_count() > 1
    self._ckpt = checkpointer

  def __enter__(self) -> _Signals:
    for sig in (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def stop_at(self, step: int) -> bool:
    """True on every process at the same step once a preemption was signalled."""
    if self._multi and self._ckpt.manager.reached_preemption(step):
      self.requested = True
    return self.requested

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    if not self.requested:
      logging.warning("signal %d: finishing this step, then checkpointing", signum)
    self.requested = True

  def __exit__(self, *exc: Any) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)


class _Edges:
  """The run's mutable state and the work done at its edges (eval, log line, save)."""

  def __init__(self, config: Any, rs: RunSetup, plan: Plan, started: _Started,
               log: MetricsLog, seams: Seams):
    self.config, self.rs, self.log, self.seams = config, rs, log, seams
    self.state, self.it, self.checkpointer = started.state, started.it, started.checkpointer
    self.run_meta, self.eval_set, prev = started.run_meta, started.eval_set, started.resumed
    b = config.batch
    self.tokens_per_step = b.global_batch * b.seq_len
    self.pipe = MetricsPipe(guards.NonFiniteGuard(config.optimizer.skip_nonfinite,
                                                  int(prev.get("nonfinite_skipped", 0))))
    self.tracker = EvalTracker(config.eval.early_stop_patience,
                               config.eval.early_stop_min_delta, prev.get("best_val_loss"),
                               int(prev.get("evals_without_improvement", 0)),
                               prev.get("val_loss"))
    self.window = ThroughputWindow(self.tokens_per_step)
    self.flops_per_token = flops.flops_per_token(plan.model_cfg, plan.counts.total, b.seq_len)
    self.peak_total = flops.device_peak(plan.model_cfg.dtype)[0] * jax.device_count()
    self.ckpt_bytes = guards.state_bytes((self.state.params, self.state.opt_state))

  def evaluate(self) -> float:
    return self.rs.eval_loss(self.state.params, self.eval_set)

  def eval_edge(self, step: int) -> None:
    self.tracker.update(self.evaluate())
    bpb = pipeline.bits_per_byte(self.tracker.val_loss, self.run_meta["eval_batches"])
    self.log.write({"event": "eval", "step": step, "val_loss": self.tracker.val_loss,
                    "val_bpb": bpb, "best_val_loss": self.tracker.best})
    if jax.process_index() == 0 and bpb is not None:
      logging.info("eval step %d: val loss %.4f, val_bpb %.4f", step, self.tracker.val_loss, bpb)

  def log_edge(self, step: int, m: dict[str, Any]) -> None:
    tps, step_s = self.window.close()
    rec = {"event": "train", "step": step, "train_steps": self.config.train_steps,
           "loss": float(np.mean(self.pipe.losses)),
           "val_loss": self.tracker.val_loss, "grad_norm": float(m["grad_norm"]),
           "lr": float(m["lr"]), "tokens_per_s": tps,
           "model_tflops": tps * self.flops_per_token / 1e12,
           "mfu": tps * self.flops_per_token / self.peak_total,
           "elapsed_s": self.window.elapsed(),
           "eta_s": (self.config.train_steps - step) * step_s}
    self.pipe.losses.clear()
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
    meta = metadata.save_record(
        self.run_meta, step=step, tokens_seen=step * self.tokens_per_step, val_loss=loss,
        best_val_loss=self.tracker.best, evals_without_improvement=self.tracker.bad_evals,
        nonfinite_skipped=self.pipe.guard.skipped, termination=reason)
    t = time.perf_counter()
    try:
      self.checkpointer.save(step, self.state.params, self.state.opt_state, self.it, meta, loss)
    except OSError as e:  # A failed write (or an earlier async one) stops as one typed line.
      raise _write_error(e, self.checkpointer.directory, step) from None
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
  run_meta: dict[str, Any]
  resumed: dict[str, Any]  # the resumed checkpoint's metadata ({} for a fresh or --init run)
  eval_set: list[Any]


def _start(config: Any, workdir: str, plan: Plan, data: RunData, rs: RunSetup, init: str,
           seams: Seams, log: MetricsLog) -> _Started:
  """Iterator, checkpointer, the state (resumed, warm-started or fresh, each validated),
  eval batches and the run's metadata record; the step-0 check runs on a loaded state."""
  it = rs.train_iter(data.train, config.train_steps)
  checkpointer = Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      keep_best=config.checkpoint.keep_best, async_save=config.checkpoint.async_save,
      fault_hook=seams.checkpoint_fault)
  tok = data.tokenizer.to_json()
  state, resumed = resume.restore_or_init(rs.state, checkpointer, it, tok)
  loaded, source = resumed, f"resume from {checkpointer.directory}"
  if init and resumed is None:
    state, loaded = resume.init_from(rs.state, init, tok, rs.tx)
    source = f"--init={init}"
  elif init:
    logging.warning("resuming the run in %s; --init=%s applies only to a fresh run and is "
                    "ignored", workdir, init)
  eval_set, eval_desc = pipeline.eval_batches(
      data.val, batch_size=config.eval.batch_size or config.batch.global_batch,
      seq_len=config.batch.seq_len, n_batches=config.eval.eval_batches, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      token_bytes=data.tokenizer.token_bytes())
  eval_global = [rs.to_global(b) for b in eval_set]
  if loaded is not None:
    _step0_check(loaded, source, data.val, lambda bs: rs.eval_loss(
        state.params, [rs.to_global(b) for b in bs]), plan.model_cfg.dtype, log,
        strict_data=resumed is not None)
  run_meta = metadata.run_record(
      config=config.to_dict(), model_cfg=plan.model_cfg, counts=plan.counts, tokenizer=tok,
      signature=rs.state.expected_signature(), manifest=data.manifest,
      gate=plan.verdict.to_dict(), eval_batches=eval_desc,
      mesh={a: int(rs.mesh.shape[a]) for a in sharding.AXES}, changes=plan.changes,
      sources=data.sources)
  return _Started(state, it, checkpointer, run_meta, resumed or {}, eval_global)


def run(config: Any, workdir: str, plan: Plan, *, stop_after: int = 0, init: str = "",
        seams: Seams | None = None) -> RunResult:
  seams = seams or Seams()
  # Mesh and data first: such refusals must leave no run directory behind (no compile needed).
  sharding.run_mesh_shape(config, plan.model_cfg, jax.device_count())
  data = open_data(config, workdir, plan.model_cfg)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    write_json_atomic(os.path.join(workdir, "gate.json"), plan.verdict.to_dict())
    workdir_lib.record_owner(workdir, config.to_dict(), plan.verdict.to_dict(), plan.changes)
  log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), enabled=is_main,
                   on_write=seams.after_record)
  log.write_gate(plan.verdict)
  rs = RunSetup.build(config, plan.model_cfg)
  s = _start(config, workdir, plan, data, rs, init, seams, log)
  start = int(s.state.step)
  _log_start(plan, rs, start, config.train_steps)
  step, last, termination = start, config.train_steps, Termination.COMPLETED
  e = _Edges(config, rs, plan, s, log, seams)
  with _Signals(s.checkpointer) as signals, _record_failure(log, s.checkpointer, lambda: step):
    while step < last:
      e.state, metrics = rs.compiled(e.state, rs.to_global(next(s.it)))
      step += 1
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
  return _finish(log, step, termination, e.tracker, e.window.elapsed(), is_main)


def _log_start(plan: Plan, rs: RunSetup, start: int, train_steps: int) -> None:
  v, counts = plan.verdict, plan.counts
  peak, peak_src = flops.device_peak(plan.model_cfg.dtype)
  logging.info("N = %s parameters (%s non-embedding); D = %s planned tokens (D/N = %s, %s)",
               f"{counts.total:,}", f"{counts.non_embedding:,}", f"{v.tokens:,}",
               chinchilla.ratio_text(v.tokens, v.n_params), v.zone)
  logging.info("mesh: %s; compile %.2fs; peak %.1f TFLOP/s/device (%s); start step %d/%d; "
               "malloc: %s", sharding.describe(rs.mesh), rs.compile_s, peak / 1e12, peak_src,
               start, train_steps, host_memory.describe())


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


def _step0_check(meta: dict, source: str, val_arr: pipeline.TokenArray,
                 eval_loss: Callable[[list], float], compute_dtype: str, log: MetricsLog,
                 strict_data: bool) -> None:
  """Before the first step: restored params must reproduce the recorded val loss on the very
  batches that produced it, or the run stops (InitEvalMismatchError)."""
  recorded, desc = meta.get("val_loss"), meta.get("eval_batches")
  if recorded is None or not desc:
    logging.warning("step-0 check skipped for %s: no recorded val loss", source)
    return
  try:
    batches = pipeline.reproduce_eval_batches(
        val_arr, desc, process_index=jax.process_index(), process_count=jax.process_count())
  except pipeline.DataError as err:
    if strict_data:
      raise
    logging.warning("step-0 check skipped for %s: %s", source, err)
    return
  measured = eval_loss(batches)
  diff = arch_match.check_init_eval(source, recorded, measured, compute_dtype)
  log.write({"event": "step0_check", "source": source, "recorded": recorded,
             "measured": measured, "abs_diff": diff})
  logging.info("step-0 check passed for %s: val loss %.6f vs recorded %.6f", source, measured,
               recorded)
