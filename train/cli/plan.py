"""`pregate-plan`: dry-run an experiment config through the Chinchilla gate, before anything is
compiled.

Prints N, D, the gate's verdict, the compute C = 6*N*D (plus a distillation teacher's forward,
2*N_t*D, its model config read from the teacher's checkpoint), optional wall-time estimates and a
data repetition report, so an under-provisioned plan is caught in seconds rather than after a
compile. This is the I/O side (flags, files, printing); the decisions live in gates.chinchilla
and gates.repetition.

  pregate-plan --config=configs/shakespeare_char.py [--config.train_steps=4000]
      [--tokens_per_sec=50000] [--data_dir=DIR] [--force_under_provisioned]
      [--device=h100 --devices=8]   (the step's memory per device and a fit verdict, with a fix)

With a budget it advises instead (train.cli.advise): the N, D and model shape to train.

  pregate-plan --config=configs/shakespeare_char.py --budget_flops=3e12 [--fit=FIT.json]
  pregate-plan --config=... --budget_hours=0.1 --tokens_per_sec=50000

With --measure (opt-in: it compiles) it also times the real step, an eval and a save on this
host and prints the run's wall-time forecast (gates.forecast, timed by
train.run.measure.plan_lines). Without --measure nothing from the train stack is imported and
nothing compiles.

Exit status: 0 the run would proceed (passed, or bypassed) and fit, 3 the gate would refuse it or
the step would not fit the --device, 2 bad input.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping

from absl import flags
from ml_collections import ConfigDict

from core import cli, contracts
from core.checks import first_line
from core.errors import ConfigError, DataError
from gates import chinchilla, chinchilla_contract, repetition
from models import params
from models.config import ModelConfig
from train.cli import advise, define_config_flag, memory_plan
from train.data import unique_tokens

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a program, so importing this module (tests, tools) defines no global flags.
  define_config_flag("experiment config file")
  flags.DEFINE_float("tokens_per_sec", None, "measured training throughput; adds wall times")
  flags.DEFINE_string("data_dir", None, "prepared data dir (manifest.json with train_tokens); "
                      "default config.data.data_dir")
  flags.DEFINE_bool("force_under_provisioned", False,
                    "proceed even if the Chinchilla gate refuses; the bypass is recorded")
  flags.DEFINE_bool("measure", False, "compile and time the real step, one eval and one save "
                    "on this host, then print the run's wall-time forecast (takes a compile)")
  advise.define_flags()
  memory_plan.define_flags()


def human_duration(seconds: float) -> str:
  """'42.0 s', '12.5 min', '213.4 h' (days added past two days)."""
  if seconds < 60:
    return f"{seconds:.1f} s"
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  hours = seconds / 3600
  return f"{hours:,.1f} h" + (f" ({hours / 24:,.1f} d)" if hours >= 48 else "")


def _teacher_spec(config: ConfigDict) -> str:
  return str(config.get("distill", {}).get("teacher", "") or "")


def _teacher_model(spec: str) -> dict[str, Any]:
  """A distillation teacher's model config, from its checkpoint's files (nothing compiles)."""
  from train.run import teacher
  return teacher.model_config(spec)


def teacher_lines(config: ConfigDict, n: int, tokens: int,
                  teacher_model: Mapping[str, Any] | None) -> tuple[list[str], float]:
  """A distillation run's teacher in the plan: its N_t and the forward FLOPs 2*N_t*D it adds
  to the student's 6*N*D; -> (lines, compute factor (6N + 2N_t) / 6N for the time figures)."""
  spec = _teacher_spec(config)
  if not spec or teacher_model is None:
    return [], 1.0
  n_t = params.count_params(ModelConfig.from_dict(dict(teacher_model))).total
  extra = 2 * n_t * tokens
  alpha = float(config.distill.alpha)
  if not alpha:
    return [f"distill: teacher {spec}, N_t = {n_t:,}; alpha = 0: its forward does not run "
            f"(ordinary training), +0 FLOPs"], 1.0
  factor = (6 * n * tokens + extra) / (6 * n * tokens)
  return [f"distill: teacher {spec}, N_t = {n_t:,} parameters (frozen, forward only): "
          f"+2*N_t*D = {extra:.3e} FLOPs, C with the teacher = {6 * n * tokens + extra:.3e} "
          f"FLOPs (x{factor:.2f} the student's); the gate judges the student's N and D"], factor


def plan(config: ConfigDict, *, tokens_per_sec: float | None = None, data_dir: str | None = None,
         bypass: bool = False, teacher_model: Mapping[str, Any] | None = None
         ) -> tuple[list[str], chinchilla.Verdict]:
  """Report lines (the verdict's line last) and the verdict for one config. A distillation
  config's teacher adds its forward FLOPs to the compute and time figures; its model config is
  read from the teacher's checkpoint unless `teacher_model` gives it."""
  spec = _teacher_spec(config)
  if spec and teacher_model is None:
    teacher_model = _teacher_model(spec)
  if tokens_per_sec is not None and not tokens_per_sec > 0:
    raise ConfigError(f"--tokens_per_sec must be > 0, got {tokens_per_sec!r}")
  model_cfg = ModelConfig.from_dict(dict(config.model))
  counts = params.count_params(model_cfg)
  steps, batch, seq = config.train_steps, config.batch.global_batch, config.batch.seq_len
  tokens = chinchilla.planned_tokens(steps, batch, seq)
  per_source, source = unique_tokens.unique_train_tokens(config.get("data", ConfigDict()),
                                                         data_dir)
  contract = chinchilla_contract.parse(contracts.load(chinchilla.CONTRACT))
  verdict = chinchilla.evaluate(contract, counts.total, counts.non_embedding, tokens,
                                batch * seq, bypass=bypass, unique_tokens=per_source)
  n = counts.total
  lines = [
      f"model: N = {n:,} trainable parameters ({counts.non_embedding:,} non-embedding, "
      f"{n - counts.non_embedding:,} embedding)",
      f"plan: D = train_steps {steps:,} x global_batch {batch:,} x seq_len {seq:,} = "
      f"{tokens:,} tokens ({batch * seq:,} tokens/step), D/N = "
      f"{chinchilla.ratio_text(tokens, n)}",
  ]
  if verdict.steps_needed is None:
    lines.append(f"compute: C = 6*N*D = {6 * n * tokens:.3e} FLOPs; no compute-optimal plan "
                 f"within {verdict.max_epochs} epochs of the data: N <= "
                 f"{verdict.n_params_max:,} can reach D' >= {verdict.floor_ratio}*N")
  else:
    optimal_tokens = verdict.steps_needed * verdict.tokens_per_step
    lines.append(f"compute: C = 6*N*D = {6 * n * tokens:.3e} FLOPs; compute-optimal "
                 f"({verdict.floor_ratio}*N, {verdict.steps_needed:,} steps) = "
                 f"{6 * n * optimal_tokens:.3e} FLOPs")
  distill, factor = teacher_lines(config, n, tokens, teacher_model)
  lines += distill
  if tokens_per_sec is not None:
    # A distilling step does the teacher's forward too: the student-alone throughput given
    # slows by the compute factor (a measured distillation step: --measure).
    secs = factor / tokens_per_sec
    line = f"time: planned run {steps:,} steps ~ {human_duration(tokens * secs)}"
    if verdict.steps_needed is not None:
      line += (f"; compute-optimal needs {verdict.steps_needed:,} steps ~ "
               f"{human_duration(optimal_tokens * secs)}")
    with_teacher = f" (x{factor:.2f} for the teacher's forward)" if factor != 1.0 else ""
    lines.append(f"{line} at {tokens_per_sec:,.0f} tokens/s{with_teacher}")
  if per_source is None:
    lines.append(f"data: repetition report skipped: {source}")
  else:
    for use in verdict.sources:
      lines.extend(repetition.report(contract, round(use.tokens), use.unique_tokens,
                                     n_params=n, source=f"{use.name}: {source}").lines())
  lines.append(packing_line(config, data_dir or config.get("data", ConfigDict()).get("data_dir")))
  lines.append(verdict.message())
  return lines, verdict


def packing_line(config: ConfigDict, data_dir: str | None) -> str:
  """How the run would pack documents, measured on its first batch of the prepared data."""
  if not data_dir:
    return "packing: not measured: no prepared data (pass --data_dir=WORKDIR/data)"
  from train.data import documents, pipeline
  from train.run.setup import packing_line as measured
  try:
    train = pipeline.open_split(data_dir, "train")
    dcfg = config.data
    packing = documents.resolve(dcfg.document_masking, dcfg.document_positions,
                                train.documents)
    return measured(train, config, packing)
  except DataError as e:
    return f"packing: not measured: {first_line(e)}"


def _measure(config: ConfigDict) -> list[str]:
  """Do the run's start-up work before timing, so start-up is measured over the same work:
  the run's imports and preflight (on a throwaway workdir), then the re-exec under the malloc
  tunable, after which `train.main` imports and preflights again (nothing is printed yet)."""
  from train.cli import main as _run_command  # noqa: F401  (the run's imports)
  from train.run.preflight import preflight
  from train.runtime import host_memory
  with tempfile.TemporaryDirectory(prefix="pregate-measure-") as tmp:
    preflight(config, os.path.join(tmp, "run"), FLAGS.force_under_provisioned)
  host_memory.reexec_with_tunables()
  from train.run import measure
  return measure.plan_lines(config)


def main(argv: list[str]) -> int:
  del argv
  if FLAGS.config is None:
    raise ConfigError("no experiment config: pass --config=configs/<experiment>.py")
  if FLAGS.measure and advise.wanted(FLAGS):
    raise ConfigError("--measure forecasts the config's own plan: drop the --budget_* flags")
  if advise.wanted(FLAGS):
    lines, verdict = advise.advise(FLAGS.config, FLAGS, data_dir=FLAGS.data_dir)
  else:
    lines, verdict = plan(FLAGS.config, tokens_per_sec=FLAGS.tokens_per_sec,
                          data_dir=FLAGS.data_dir, bypass=FLAGS.force_under_provisioned)
  fits = True
  if memory_plan.wanted(FLAGS):
    teacher = _teacher_model(_teacher_spec(FLAGS.config)) if _teacher_spec(FLAGS.config) else None
    memory_lines, fits = memory_plan.lines(FLAGS.config, FLAGS.device, FLAGS.devices, teacher)
    lines += memory_lines
  if FLAGS.measure and verdict.proceeds:
    lines += _measure(FLAGS.config)
  elif FLAGS.measure:
    lines.append("forecast: not measured, the gate refuses this run (nothing was compiled)")
  print("\n".join(lines))
  return 0 if verdict.proceeds and fits else chinchilla.ChinchillaGateError.exit_code


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
