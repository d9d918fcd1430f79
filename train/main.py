"""`python -m train.main --config=configs/x.py --workdir=DIR`: the pretraining command.

Order matters: flags and config are parsed, the config is sanity-checked and the Chinchilla gate
decides from the abstract model, all before any XLA compile and before anything in the workdir
is written. Re-running the same command on the same workdir resumes from the latest checkpoint.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gates import chinchilla, config_sanity, ownership, unique_tokens
from gates.errors import ConfigError, DataError, GateRefusal, PregateError
from models.config import ModelConfig, ModelConfigError
from models.params import count_params
from train import cli, host_memory, provenance

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/shakespeare_char.py.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, data.")
_FORCE = flags.DEFINE_bool(
    "force_under_provisioned", False,
    "Run even if D < 20 N (Chinchilla gate); the bypass is logged and stamped into every "
    "checkpoint.")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after_steps", 0, "Stop after this many steps in this process, checkpoint and exit as "
    "PREEMPTED (a planned interruption; re-run the same command to resume). 0 = off.")
_INIT = flags.DEFINE_string(
    "init", "", "Warm start a fresh run from PATH[:STEP] (a run's workdir or checkpoints dir; "
    "STEP = latest|best|N): parameters only, fresh optimizer and schedule; validated first.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 for multi-process runs (else "
    "auto-detected from SLURM/MPI/TPU environments, or a single process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's 0-based index.")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume a workdir with changed schedule fields (steps, "
    "batch, optimizer, schedule); the change is recorded in checkpoint metadata.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Print tracebacks for pregate errors too.")

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early on purpose, re-run to resume.


def _is_primary() -> bool:
  """Process 0 speaks for the job (known from flags or the launcher before jax starts)."""
  return _PROCESS_ID.value <= 0 and os.environ.get("SLURM_PROCID", "0") == "0"


def _fail(err: BaseException) -> None:
  """One line on stderr and the error's exit code; tracebacks only with --verbose. Every
  process exits with the same code; a gate refusal is printed by process 0 only."""
  cli.fail(err, verbose=_VERBOSE.value,
           quiet=isinstance(err, GateRefusal) and not _is_primary())


def preflight(config, workdir: str, force: bool, init: str = "", allow_change: bool = False
              ) -> tuple[ModelConfig, object, object, dict]:
  """Everything that can refuse a run, with nothing compiled and nothing written.

  Returns (model config, parameter counts, gate verdict, config changes vs the workdir's owner).
  """
  if config is None:
    raise ConfigError("no experiment config: pass --config=configs/<name>.py")
  if not workdir:
    raise ConfigError("no run directory: pass --workdir=DIR")
  cfg = config.to_dict()
  config_sanity.check(cfg)
  try:
    model_cfg = ModelConfig.from_dict(cfg["model"])
  except ModelConfigError as e:
    raise ConfigError(str(e)) from None
  counts = count_params(model_cfg)
  batch = cfg["batch"]
  tokens = chinchilla.planned_tokens(cfg["train_steps"], batch["global_batch"], batch["seq_len"])
  verdict = chinchilla.evaluate(counts.total, counts.non_embedding, tokens,
                                batch["global_batch"] * batch["seq_len"], bypass=force,
                                unique_tokens=unique_tokens.for_gate(cfg["data"]))
  chinchilla.enforce(verdict)
  _check_workdir(workdir)
  changes = _check_ownership(workdir, cfg, allow_change)
  if init and not os.path.isdir(_init_path(init)):
    raise ConfigError(f"--init={init}: no such checkpoint directory; pass a run's workdir or "
                      f"checkpoints dir, optionally with :STEP")
  _check_corpus(cfg["data"])
  return model_cfg, counts, verdict, changes


def _check_ownership(workdir: str, cfg: dict, allow_change: bool) -> dict:
  """Compare with WORKDIR/run.json (written by the run that owns the workdir)."""
  path = os.path.join(workdir, "run.json")
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      recorded = json.load(f)["config"]
  except (OSError, ValueError, KeyError) as e:
    raise ConfigError(f"{path} is unreadable ({e}); it records which experiment owns "
                      f"--workdir={workdir}: restore it or use a new workdir") from None
  return ownership.check(workdir, recorded, cfg, allow_change)


def _init_path(spec: str) -> str:
  from train.run_state import split_init_spec  # Only when --init is given (imports orbax).
  return split_init_spec(spec)[0]


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} is a file, not a directory; pick another path")
  probe = workdir
  while not os.path.exists(probe):
    probe = os.path.dirname(os.path.abspath(probe))
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir={workdir} is not writable ({probe}); pick a writable path")


def _check_corpus(data_cfg: dict) -> None:
  """A missing/empty corpus fails here, before the workdir is created (cheap: stat only)."""
  if data_cfg["data_dir"] and os.path.exists(os.path.join(
      provenance.resolve_path(data_cfg["data_dir"]), "manifest.json")):
    return
  corpus = provenance.resolve_path(data_cfg["corpus"])
  if "://" in corpus:
    return
  if not os.path.isfile(corpus):
    raise DataError(f"corpus file {data_cfg['corpus']} does not exist; set "
                    f"--config.data.corpus to a text file")
  if os.path.getsize(corpus) == 0:
    raise DataError(f"corpus file {data_cfg['corpus']} is empty; point "
                    f"--config.data.corpus at a non-empty text file")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config, workdir = _CONFIG.value, _WORKDIR.value
  try:
    model_cfg, counts, verdict, changes = preflight(config, workdir, _FORCE.value, _INIT.value,
                                                    _ALLOW_CHANGE.value)
    host_memory.reexec_with_tunables()  # The run will start: once, before anything is logged.
    if changes.get("safe") and _is_primary():
      logging.info("config changes since this workdir's first run (safe): %s",
                   "; ".join(changes["safe"]))
    if verdict.bypassed and _is_primary():
      logging.warning(chinchilla.warning_line(verdict))
    from train import distributed, loop  # Heavy imports only once the run may start.
    process_flags = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    distributed.split_cpu_cores(config, model_cfg,
                                distributed.wants_multi_process(*process_flags))
    distributed.initialize(*process_flags)
    from train.metrics_log import quiet_libraries
    quiet_libraries()
    result = loop.run(config, workdir, model_cfg, counts, verdict,
                      stop_after=_STOP_AFTER.value, init=_INIT.value, changes=changes)
  except PregateError as e:
    _fail(e)
  if result.termination == "PREEMPTED":
    sys.exit(EXIT_PREEMPTED)


def run() -> None:
  """Console-script entry point."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
