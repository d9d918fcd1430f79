"""`pregate-train --config=configs/x.py --workdir=DIR` (or `python -m train.main`): pretraining.

Order matters: flags and config are parsed, the config is sanity-checked and the Chinchilla gate
decides from the abstract model, all before any XLA compile and before anything in the workdir
is written (`train.run.preflight`). Re-running the same command on the same workdir resumes
from the latest checkpoint.
"""
from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

from core import cli
from core.errors import EXIT_PREEMPTED, GateRefusal
from gates import chinchilla
from train.cli import define_config_flag
from train.hf import importer
from train.run import profiling
from train.run.preflight import preflight
from train.runtime import host_memory

FLAGS = flags.FLAGS


def _define_flags() -> None:
  define_config_flag("Experiment config file, e.g. configs/shakespeare_char.py.")
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, data.")
  flags.DEFINE_bool(
      "force_under_provisioned", False,
      "Run even if the Chinchilla gate refuses (effective tokens D' < 20 N, or a source "
      "repeated past the epoch limit); the bypass and the rules it bypassed are logged and "
      "stamped into every checkpoint.")
  flags.DEFINE_integer(
      "stop_after_steps", 0, "Stop after this many steps in this process, checkpoint and exit "
      "as PREEMPTED (a planned interruption; re-run the same command to resume). 0 = off.")
  flags.DEFINE_string(
      "init", "", "Warm start a fresh run from PATH[:STEP] (a run's workdir or checkpoints "
      "dir; STEP = latest|best|N) or hf:DIR (a Hugging Face Llama/Qwen2 directory): "
      "parameters only, fresh optimizer and schedule; validated first.")
  flags.DEFINE_integer(
      "init_tokens", -1, "With --init=hf:DIR: the tokens the Hugging Face weights were trained "
      "on (the directory does not record them); the Chinchilla gate counts them toward 20 N "
      "beside this run's effective tokens (contract v1.3). 0 = judge the run as fresh. A "
      "pregate checkpoint (--init=PATH) records its own.")
  flags.DEFINE_string(
      "teacher", None, "Distill from a frozen teacher: PATH[:STEP] (a pregate run's workdir or "
      "checkpoints dir) or hf:DIR; sets --config.distill.teacher (a relative PATH resolves "
      "against this directory). Loss: (1 - distill.alpha) x cross-entropy + distill.alpha x "
      "KL(teacher || student) at distill.temperature; validated before anything compiles.")
  flags.DEFINE_string(
      "profile_steps", None, "A:B: a jax.profiler trace of steps A to B (1 <= A <= B <= "
      "train_steps) into WORKDIR/profile, for TensorBoard's profile plugin (pip install "
      "'.[profile]'; tensorboard --logdir WORKDIR); sets --config.logging.profile_steps.")
  flags.DEFINE_string(
      "coordinator_address", "", "host:port of process 0 for multi-process runs (else "
      "auto-detected from SLURM/MPI/TPU environments, or a single process).")
  flags.DEFINE_integer("num_processes", 0, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", -1, "This process's 0-based index.")
  flags.DEFINE_bool(
      "allow_config_change", False, "Resume a workdir with changed schedule fields (steps, "
      "batch, optimizer, schedule); the change is recorded in checkpoint metadata.")


def _is_primary() -> bool:
  """Process 0 speaks for the job (known from flags or the launcher before jax starts)."""
  return FLAGS.process_id <= 0 and os.environ.get("SLURM_PROCID", "0") == "0"


def _teacher_spec(flag: str) -> str:
  """--teacher's value with a relative path made absolute against the working directory (a
  config file's paths resolve against the repo root instead)."""
  prefix = importer.INIT_PREFIX if importer.is_hf_init(flag) else ""
  path = flag[len(prefix):]
  return prefix + os.path.abspath(path) if path else flag


def main(argv: list[str], seams=None) -> int:
  """The run: preflight, start-up, then the loop (train.main has re-executed for the malloc
  tunable; programmatic callers re-execute here)."""
  del argv
  config, workdir = FLAGS.config, FLAGS.workdir
  if FLAGS.teacher is not None and config is not None:
    config.distill.teacher = _teacher_spec(FLAGS.teacher)
  if FLAGS.profile_steps is not None and config is not None:
    profiling.apply_flag(config, FLAGS.profile_steps,
                         config_flags.get_override_values(FLAGS["config"]))
  plan = preflight(config, workdir, FLAGS.force_under_provisioned, FLAGS.init,
                   FLAGS.allow_config_change, FLAGS.init_tokens)
  host_memory.reexec_with_tunables()  # a no-op after train.main's early re-exec
  if plan.changes.get("safe") and _is_primary():
    logging.info("config changes since this workdir's first run (safe): %s",
                 "; ".join(plan.changes["safe"]))
  if plan.verdict.bypassed and _is_primary():
    logging.warning(chinchilla.warning_line(plan.verdict))
  from train.run import loop  # Heavy imports only once the run may start.
  from train.runtime import compile_cache, distributed, gpu_runtime
  runtime = gpu_runtime.apply()  # GPU hosts only, before JAX's backend starts
  if runtime.gpu and _is_primary():
    logging.info(gpu_runtime.describe(runtime))
  compile_cache.apply()  # every platform; the start-up log names it (bookends.log_start)
  process = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  distributed.split_cpu_cores(config, plan.model_cfg, distributed.wants_multi_process(*process))
  distributed.initialize(*process)
  init = FLAGS.init
  if init and importer.is_hf_init(init):  # converted once into WORKDIR/hf_init, then --init
    init = importer.init_from_hf(init, workdir)
  result = loop.run(config, workdir, plan, stop_after=FLAGS.stop_after_steps, init=init,
                    seams=seams)
  return EXIT_PREEMPTED if result.termination == "PREEMPTED" else 0


def run(seams=None) -> None:
  """Console-script entry point; `seams` (train.run.loop.Seams) is for fault-injection tests."""
  cli.run_command(lambda argv: main(argv, seams), _define_flags,
                  quiet_error=lambda e: isinstance(e, GateRefusal) and not _is_primary())


if __name__ == "__main__":
  run()
