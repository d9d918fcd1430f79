"""What a run says and records at its two ends: the start-up lines and the step-0 check of a
loaded state; the end record, the final line and the typed errors of a failed write or guard."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
from typing import Any, Callable, Iterator

import jax
from absl import logging

from core.errors import CheckpointError, DiskSpaceError, RunGuardError
from gates import arch_match, chinchilla
from train.ckpt import metadata
from train.ckpt.checkpointer import Checkpointer
from train.data import pipeline
from train.run import measure
from train.run import teacher as teacher_lib
from train.run.edges import EvalTracker, Termination
from train.run.metrics_log import MetricsLog
from train.run.preflight import Plan
from train.run.setup import RunSetup
from train.runtime import host_memory
from train.state import flops, sharding


@dataclasses.dataclass
class RunResult:
  termination: str
  step: int
  val_loss: float | None
  best_val_loss: float | None


def sinks(*sinks: Callable[[dict[str, Any]], None] | None
           ) -> Callable[[dict[str, Any]], None]:
  """One metrics-record callback that feeds every given sink in order."""
  live = [s for s in sinks if s is not None]
  return lambda record: [sink(record) for sink in live] and None


def log_start(config: Any, plan: Plan, rs: RunSetup, start: int, memory_line: str) -> None:
  v, counts, train_steps = plan.verdict, plan.counts, config.train_steps
  peak, peak_src = flops.device_peak(plan.model_cfg.dtype)
  logging.info("N = %s parameters (%s non-embedding); D = %s planned tokens (D/N = %s, %s)",
               f"{counts.total:,}", f"{counts.non_embedding:,}", f"{v.tokens:,}",
               chinchilla.ratio_text(v.tokens, v.n_params), v.zone)
  logging.info("mesh: %s; compile %.2fs (cache %s); peak %.1f TFLOP/s/device (%s); start "
               "step %d/%d; malloc: %s", sharding.describe(rs.mesh), rs.compile_s,
               jax.config.jax_compilation_cache_dir or "off", peak / 1e12, peak_src, start,
               train_steps, host_memory.describe())
  if jax.process_index() == 0:
    logging.info("%s", measure.start_line(config, start, rs.compile_s))
    logging.info("%s", memory_line)
    if rs.teacher is not None:
      logging.info("%s", teacher_lib.start_line(rs.teacher, config, flops.flops_per_token(
          plan.model_cfg, counts.total, config.batch.seq_len)))


def finish(log: MetricsLog, step: int, termination: Termination, tracker: EvalTracker,
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
def record_failure(log: MetricsLog, checkpointer: Checkpointer,
                    step_fn: Callable[[], int]) -> Iterator[None]:
  """A guard failure ends the run with its reason recorded; in-flight saves of good states
  still commit before the error propagates."""
  try:
    yield
  except (RunGuardError, CheckpointError) as e:
    log.write({"event": "end", "step": step_fn(), "termination": Termination.of_error(e).value,
               "error": str(e)})
    try:
      checkpointer.close()
    except Exception as close_err:  # pylint: disable=broad-except
      logging.warning("an in-flight checkpoint write failed too: %s", close_err)
    log.close()
    raise


def write_error(err: OSError, directory: str, step: int) -> Exception:
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


def step0_check(meta: metadata.Metadata, source: str, val_arr: pipeline.TokenArray,
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
