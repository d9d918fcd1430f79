"""The training loop: set up (data, mesh, state), then step, evaluate, log and checkpoint.

The hot path is one AOT-compiled step; everything with side effects (metrics, eval, saves)
happens at the loop's edges, and the host reads step k's metrics only after dispatching step
k+1, so the device never waits for Python.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from absl import logging

from gates import arch_match, chinchilla, ownership
from train import checkpoint as ckpt_lib
from train import data as data_lib
from train import flops, guards, host_memory, prepare_data, provenance, run_state, sharding
from train import step as step_lib
from train.metrics_log import MetricsLog, format_line
from train.tokenizer import tokenizer_from_json

COMPLETED, EARLY_STOP, PREEMPTED = "COMPLETED", "EARLY_STOP", "PREEMPTED"


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

  def __init__(self, checkpointer: ckpt_lib.Checkpointer):
    self.requested = False
    self._old = {}
    self._multi = jax.process_count() > 1
    self._ckpt = checkpointer

  def __enter__(self):
    for sig in (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT):
      self._old[sig] = signal.signal(sig, self._handle)
    return self

  def stop_at(self, step: int) -> bool:
    """True on every process at the same step once a preemption was signalled."""
    if self._multi and self._ckpt.manager.reached_preemption(step):
      self.requested = True
    return self.requested

  def _handle(self, signum, frame):
    del frame
    if not self.requested:
      logging.warning("signal %d: finishing this step, then checkpointing", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _data(config, workdir: str, model_cfg) -> tuple[dict, Any, Any, Any]:
  """Prepare (once, cached) and open the train/val token arrays; check the tokenizer fits."""
  dcfg = config.data
  data_dir, val_dir = provenance.data_dirs(dcfg, workdir)
  if jax.process_index() == 0:  # One writer; the others read what it wrote (shared FS).
    manifest = prepare_data.ensure_prepared(provenance.resolve_path(dcfg.corpus), data_dir,
                                            dcfg.tokenizer, dcfg.val_fraction)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("pregate:data_prepared")
    manifest = prepare_data.load_manifest(data_dir)
  tokenizer = tokenizer_from_json(manifest["tokenizer"])
  if tokenizer.vocab_size != model_cfg.vocab_size:
    raise data_lib.DataError(
        f"tokenizer vocabulary has {tokenizer.vocab_size} symbols but model.vocab_size="
        f"{model_cfg.vocab_size}; set --config.model.vocab_size={tokenizer.vocab_size}")
  train_arr = data_lib.open_split(data_dir, "train")
  val_arr = data_lib.open_split(val_dir, "val")
  need = config.batch.seq_len + 1
  train_arr.require(need, "training windows of batch.seq_len + 1 tokens")
  val_arr.require(need, "validation windows of batch.seq_len + 1 tokens")
  return manifest, tokenizer, train_arr, val_arr


def run(config, workdir: str, model_cfg, counts, verdict: chinchilla.Verdict, *,
        stop_after: int = 0, init: str = "", changes: dict | None = None) -> RunResult:
  # Mesh and data first: such refusals must leave no run directory behind (no compile needed).
  shape = sharding.run_mesh_shape(config, model_cfg, jax.device_count())
  manifest, tokenizer, train_arr, val_arr = _data(config, workdir, model_cfg)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    ckpt_lib.write_json_atomic(os.path.join(workdir, "gate.json"), verdict.to_dict())
    _record_owner(workdir, config.to_dict(), verdict, changes or {})
  log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), enabled=is_main)
  log.write_gate(verdict)

  mesh = sharding.make_mesh(shape)
  tx, schedule = step_lib.make_optimizer(config), step_lib.lr_schedule(config)
  setup = run_state.TrainSetup.build(model_cfg, tx, config.seed, mesh)

  bcfg = config.batch
  it = data_lib.make_train_iter(
      train_arr, global_batch=bcfg.global_batch, seq_len=bcfg.seq_len, seed=config.seed,
      num_batches=config.train_steps, process_index=jax.process_index(),
      process_count=jax.process_count())
  checkpointer = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      keep_best=config.checkpoint.keep_best, async_save=config.checkpoint.async_save)
  state, resumed_meta = setup.restore_or_init(checkpointer, it, tokenizer.to_json())
  loaded_meta, loaded_from = resumed_meta, f"resume from {checkpointer.directory}"
  if init and resumed_meta is None:
    state, loaded_meta = setup.init_from(init, tokenizer.to_json(), tx)
    loaded_from = f"--init={init}"
  elif init:
    logging.warning("resuming the run in %s; --init=%s applies only to a fresh run and is "
                    "ignored", workdir, init)
  start = int(state.step)

  eval_bs = config.eval.batch_size or bcfg.global_batch
  eval_set, eval_desc = data_lib.eval_batches(
      val_arr, batch_size=eval_bs, seq_len=bcfg.seq_len, n_batches=config.eval.eval_batches,
      seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
  batch_sharding = sharding.batch_sharding(mesh)
  to_global = lambda b: jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding, x), b)

  t0 = time.perf_counter()
  train_step = setup.jit_step(step_lib.make_train_step(
      setup.graphdef, tx, schedule, bcfg.grad_accum,
      skip_nonfinite=config.optimizer.skip_nonfinite > 0))
  abstract_batch = {k: jax.ShapeDtypeStruct((bcfg.global_batch, bcfg.seq_len), np.int32,
                                            sharding=batch_sharding)
                    for k in ("inputs", "targets")}
  compiled = train_step.lower(state, abstract_batch).compile()
  compile_s = time.perf_counter() - t0
  eval_fn = jax.jit(step_lib.make_eval_step(setup.graphdef),
                    in_shardings=(setup.shardings.params, batch_sharding))
  eval_global = [to_global(b) for b in eval_set]
  if loaded_meta is not None:
    _step0_check(loaded_meta, loaded_from, val_arr, lambda bs: float(np.mean(jax.device_get(
        [eval_fn(state.params, to_global(b)) for b in bs]))), model_cfg.dtype, log,
        strict_data=resumed_meta is not None)

  def evaluate() -> float:
    losses = [eval_fn(state.params, b) for b in eval_global]
    return float(np.mean(jax.device_get(losses)))

  tokens_per_step = bcfg.global_batch * bcfg.seq_len
  fpt = flops.flops_per_token(model_cfg, counts.total, bcfg.seq_len)
  peak, peak_src = flops.device_peak(model_cfg.dtype)
  peak_total = peak * jax.device_count()
  logging.info("N = %s parameters (%s non-embedding); D = %s planned tokens (D/N = %s, %s)",
               f"{counts.total:,}", f"{counts.non_embedding:,}", f"{verdict.tokens:,}",
               chinchilla.ratio_text(verdict.tokens, verdict.n_params), verdict.zone)
  logging.info("mesh: %s; compile %.2fs; peak %.1f TFLOP/s/device (%s); start step %d/%d; "
               "malloc: %s", sharding.describe(mesh), compile_s, peak / 1e12, peak_src, start,
               config.train_steps, host_memory.describe())

  meta_common = dict(
      schema=ckpt_lib.META_SCHEMA, model=model_cfg.to_dict(), param_counts=counts.to_dict(),
      tokenizer=tokenizer.to_json(), data=_data_fingerprint(manifest), gate=verdict.to_dict(),
      signature={p: [list(s), d] for p, (s, d) in setup.expected_signature().items()},
      config=config.to_dict(), planned_tokens=verdict.tokens, eval_batches=eval_desc,
      mesh={a: int(mesh.shape[a]) for a in sharding.AXES}, libraries=provenance.library_versions(),
      git_commit=provenance.git_commit(), architecture=run_state.ARCHITECTURE,
      config_changes=(changes or {}).get("schedule", []) + (changes or {}).get("safe", []))
  prev = resumed_meta or {}
  best = prev.get("best_val_loss")
  bad_evals = int(prev.get("evals_without_improvement", 0))
  val_loss = prev.get("val_loss")
  termination = COMPLETED
  guard = guards.NonFiniteGuard(config.optimizer.skip_nonfinite,
                                int(prev.get("nonfinite_skipped", 0)))
  ckpt_bytes = guards.state_bytes((state.params, state.opt_state))
  pending: list = []  # (step, device metrics) not yet read by the host
  window_losses: list[float] = []

  def consume() -> dict | None:
    """Read the pending step's metrics (the device has moved on) and guard them."""
    if not pending:
      return None
    at, dev = pending.pop()
    m = jax.device_get(dev)
    guard.check(at, float(m["loss"]), float(m["grad_norm"]), int(m["skipped"]))
    window_losses.append(float(m["loss"]))
    return m

  def save(step: int, loss: float | None, reason: str | None = None) -> None:
    consume()  # A poisoned step raises here, before its state can replace a good checkpoint.
    guards.check_disk(checkpointer.directory, ckpt_bytes)
    meta = dict(meta_common, step=step, tokens_seen=step * tokens_per_step, val_loss=loss,
                best_val_loss=best, evals_without_improvement=bad_evals,
                nonfinite_skipped=guard.skipped, termination=reason)
    t = time.perf_counter()
    if loss is None:  # Every checkpoint records the val loss its params give (step-0 check).
      meta["val_loss"] = loss = evaluate()
    if not np.isfinite(loss):
      raise guards.NonFiniteLossError(
          f"validation loss {loss} at step {step}: the parameters are poisoned and were not "
          f"saved; the last good checkpoint is intact. Lower optimizer.lr or raise warmup")
    try:
      checkpointer.save(step, state.params, state.opt_state, it, meta, loss)
    except OSError as e:  # A failed write (or an earlier async one) stops as one typed line.
      raise _write_error(e, checkpointer.directory, step) from None
    log.write({"event": "save", "step": step, "blocking_s": time.perf_counter() - t})

  step = start
  window_t, window_steps, idle = time.perf_counter(), 0, 0.0
  run_t0 = time.perf_counter()
  with _Signals(checkpointer) as signals, _record_failure(log, checkpointer, lambda: step):
    while step < config.train_steps:
      batch = to_global(next(it))
      state, metrics = compiled(state, batch)
      consume()
      step += 1
      pending.append((step, metrics))
      window_steps += 1
      edge_t = time.perf_counter()
      is_eval = step % config.eval.eval_every == 0 or step == config.train_steps
      is_log = step % config.logging.log_every == 0 or step == config.train_steps
      if is_log or is_eval:
        m = consume()
      if is_eval:
        val_loss = evaluate()
        min_delta = config.eval.early_stop_min_delta
        if best is None or val_loss < best - min_delta:
          best, bad_evals = min(val_loss, best if best is not None else val_loss), 0
        else:
          bad_evals += 1
          best = min(best, val_loss)
        log.write({"event": "eval", "step": step, "val_loss": val_loss, "best_val_loss": best})
      if is_log:
        now = time.perf_counter()
        dt = max(now - window_t - idle, 1e-9)
        tps = window_steps * tokens_per_step / dt
        elapsed = now - run_t0
        rec = {"event": "train", "step": step, "train_steps": config.train_steps,
               "loss": float(np.mean(window_losses)), "val_loss": val_loss,
               "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]), "tokens_per_s": tps,
               "model_tflops": tps * fpt / 1e12, "mfu": tps * fpt / peak_total,
               "elapsed_s": elapsed,
               "eta_s": (config.train_steps - step) * dt / window_steps}
        log.write(rec)
        if is_main:
          logging.info(format_line(rec))
        window_t, window_steps, idle = now, 0, 0.0
        window_losses.clear()
        edge_t = now  # this edge's time so far (eval, log) belongs to the window just closed
      patience = config.eval.early_stop_patience
      stop_early = is_eval and patience > 0 and bad_evals >= patience
      preempt = signals.stop_at(step) or (stop_after and step - start >= stop_after)
      if stop_early:
        termination = EARLY_STOP
      elif preempt and step < config.train_steps:
        termination = PREEMPTED
      if step % config.checkpoint.save_every == 0 and termination == COMPLETED \
          and step < config.train_steps:
        save(step, val_loss if is_eval else None)
      if termination != COMPLETED:
        break
      idle += time.perf_counter() - edge_t
    if step > start:  # A resume of a finished run trains nothing and saves nothing.
      save(step, None if termination == PREEMPTED else val_loss, termination)
    try:
      checkpointer.close()
    except OSError as e:
      raise _write_error(e, checkpointer.directory, step) from None
  log.write({"event": "end", "step": step, "termination": termination, "val_loss": val_loss,
             "best_val_loss": best, "elapsed_s": time.perf_counter() - run_t0})
  if is_main:
    logging.info("%s at step %d: final val loss %s (best %s)", termination, step,
                 "n/a" if val_loss is None else f"{val_loss:.4f}",
                 "n/a" if best is None else f"{best:.4f}")
    print(f"final val loss: {'n/a' if val_loss is None else f'{val_loss:.4f}'} "
          f"(step {step}, {termination})", flush=True)
  log.close()
  return RunResult(termination, step, val_loss, best)


@contextlib.contextmanager
def _record_failure(log: MetricsLog, checkpointer: ckpt_lib.Checkpointer, step_fn):
  """A guard failure ends the run with its reason recorded; in-flight saves of good states
  still commit before the error propagates."""
  try:
    yield
  except (guards.NonFiniteLossError, guards.DiskSpaceError, ckpt_lib.CheckpointError) as e:
    reason = ("NONFINITE" if isinstance(e, guards.NonFiniteLossError) else
              "DISK_FULL" if isinstance(e, guards.DiskSpaceError) else "CHECKPOINT_FAILED")
    log.write({"event": "end", "step": step_fn(), "termination": reason, "error": str(e)})
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
    return guards.DiskSpaceError(
        f"checkpoint step {step} could not be written under {directory} ({err.strerror}); "
        f"free disk space, then re-run the same command to resume from the last complete "
        f"checkpoint")
  return ckpt_lib.CheckpointError(
      f"checkpoint step {step} could not be written under {directory} ({err}); fix the "
      f"filesystem, then re-run the same command to resume from the last complete checkpoint")


def _record_owner(workdir: str, cfg: dict, verdict: chinchilla.Verdict, changes: dict) -> None:
  """WORKDIR/run.json: the experiment that owns the workdir, plus every accepted change."""
  path = os.path.join(workdir, "run.json")
  if os.path.exists(path):
    with open(path) as f:
      owner = json.load(f)
    if changes.get("schedule") or changes.get("safe"):
      owner.setdefault("changes", []).append({"time": time.time(), **changes})
      owner["config"] = cfg
  else:
    owner = {"config": cfg, "config_hash": ownership.config_hash(cfg), "gate": verdict.to_dict(),
             "created": time.time()}
  ckpt_lib.write_json_atomic(path, owner)


def _step0_check(meta: dict, source: str, val_arr, eval_loss, compute_dtype: str,
                 log: MetricsLog, strict_data: bool) -> None:
  """Before the first step: restored params must reproduce the recorded val loss on the very
  batches that produced it, or the run stops (InitEvalMismatchError)."""
  recorded, desc = meta.get("val_loss"), meta.get("eval_batches")
  if recorded is None or not desc:
    logging.warning("step-0 check skipped for %s: no recorded val loss", source)
    return
  try:
    batches = data_lib.reproduce_eval_batches(
        val_arr, desc, process_index=jax.process_index(), process_count=jax.process_count())
  except data_lib.DataError as e:
    if strict_data:
      raise
    logging.warning("step-0 check skipped for %s: %s", source, e)
    return
  measured = eval_loss(batches)
  diff = arch_match.check_init_eval(source, recorded, measured, compute_dtype)
  log.write({"event": "step0_check", "source": source, "recorded": recorded,
             "measured": measured, "abs_diff": diff})
  logging.info("step-0 check passed for %s: val loss %.6f vs recorded %.6f", source, measured,
               recorded)




def _data_fingerprint(manifest: dict) -> dict:
  keys = ("source_sha256", "train_sha256", "val_sha256", "train_tokens", "val_tokens",
          "tokenizer_fingerprint", "val_fraction", "format_version")
  return {k: manifest.get(k) for k in keys}
