"""Dry-run an experiment config through the Chinchilla gate, before anything is compiled.

Prints N, D, the gate's verdict, the compute C = 6*N*D, optional wall-time estimates and a data
repetition report, so an under-provisioned plan is caught in seconds rather than after a compile.
This is the I/O side (flags, files, printing); the decisions live in gates.chinchilla and
gates.repetition.

  python -m gates.plan --config=configs/shakespeare_char.py [--config.train_steps=4000]
      [--tokens_per_sec=50000] [--data_dir=DIR] [--force_under_provisioned]

Exit status: 0 the run would proceed (passed, or bypassed), 3 the gate would refuse it, 2 bad input.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import flags
from ml_collections import ConfigDict, config_flags

from core import cli
from core.errors import ConfigError
from core.paths import REPO_ROOT
from gates import chinchilla, repetition
from models import params
from models.config import ModelConfig

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Only when run as a program, so importing this module (tests, tools) defines no global flags.
  config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
  flags.DEFINE_float("tokens_per_sec", None, "measured training throughput; adds wall times")
  flags.DEFINE_string("data_dir", None, "prepared data dir (manifest.json with train_tokens); "
                      "default config.data.data_dir")
  flags.DEFINE_bool("force_under_provisioned", False,
                    "proceed even if the Chinchilla gate refuses; the bypass is recorded")


def human_duration(seconds: float) -> str:
  """'42.0 s', '12.5 min', '213.4 h' (days added past two days)."""
  if seconds < 60:
    return f"{seconds:.1f} s"
  if seconds < 3600:
    return f"{seconds / 60:.1f} min"
  hours = seconds / 3600
  return f"{hours:,.1f} h" + (f" ({hours / 24:,.1f} d)" if hours >= 48 else "")


def _config_path(value: str) -> pathlib.Path:
  # Paths inside a config resolve against the repo root, as configs/base.py documents.
  path = pathlib.Path(value).expanduser()
  return path if path.is_absolute() else pathlib.Path(REPO_ROOT) / path


def _manifest_tokens(data_dir: pathlib.Path) -> tuple[int | None, str]:
  manifest = data_dir / "manifest.json"
  try:
    value = json.loads(manifest.read_text(encoding="utf-8"))["train_tokens"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return None, f"cannot read train_tokens from {manifest} ({type(e).__name__}: {e})"
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    return None, f"{manifest}: train_tokens must be a positive integer, got {value!r}"
  return value, f"train_tokens from {manifest}"


def _corpus_tokens(data: Any) -> tuple[int | None, str]:
  corpus, tokenizer = data.get("corpus", ""), data.get("tokenizer", "")
  val_fraction = data.get("val_fraction", 0.0)
  path = _config_path(corpus) if corpus else None
  if path is None or not path.is_file():
    return None, f"no manifest and no corpus file at {path}"
  if not 0 <= val_fraction < 1:
    return None, f"data.val_fraction must be in [0, 1), got {val_fraction!r}"
  raw = path.read_bytes()
  if tokenizer == "char":
    count, unit = len(raw.decode("utf-8")), "characters"
  elif tokenizer == "byte":
    count, unit = len(raw), "utf-8 bytes"
  else:
    return None, f"cannot estimate tokens for tokenizer {tokenizer!r} (know 'char', 'byte')"
  train = int(count * (1 - val_fraction))
  return train, (f"estimated: first {1 - val_fraction:.0%} of {path.name} in {unit}, "
                 f"tokenizer '{tokenizer}'")


def unique_train_tokens(data: Any, data_dir: str | None = None) -> tuple[int | None, str]:
  """U and where it came from: a prepared manifest if one exists, else a corpus estimate.

  `data_dir` (the --data_dir flag) resolves against the working directory; config.data.data_dir
  against the repo root. Returns (None, reason) when U cannot be found; the report then skips it.
  """
  if data_dir:
    directory = pathlib.Path(data_dir).expanduser().resolve()
  elif data.get("data_dir", ""):
    directory = _config_path(data.get("data_dir"))
  else:
    directory = None
  if directory is not None and (directory / "manifest.json").is_file():
    return _manifest_tokens(directory)
  return _corpus_tokens(data)


def plan(config: ConfigDict, *, tokens_per_sec: float | None = None, data_dir: str | None = None,
         bypass: bool = False) -> tuple[list[str], chinchilla.Verdict]:
  """Report lines (the verdict's line last) and the verdict for one config."""
  if tokens_per_sec is not None and not tokens_per_sec > 0:
    raise ConfigError(f"--tokens_per_sec must be > 0, got {tokens_per_sec!r}")
  model_cfg = ModelConfig.from_dict(dict(config.model))
  counts = params.count_params(model_cfg)
  steps, batch, seq = config.train_steps, config.batch.global_batch, config.batch.seq_len
  tokens = chinchilla.planned_tokens(steps, batch, seq)
  verdict = chinchilla.evaluate(counts.total, counts.non_embedding, tokens, batch * seq,
                                bypass=bypass)
  n = counts.total
  optimal_tokens = verdict.steps_needed * verdict.tokens_per_step
  lines = [
      f"model: N = {n:,} trainable parameters ({counts.non_embedding:,} non-embedding, "
      f"{n - counts.non_embedding:,} embedding)",
      f"plan: D = train_steps {steps:,} x global_batch {batch:,} x seq_len {seq:,} = "
      f"{tokens:,} tokens ({batch * seq:,} tokens/step), D/N = "
      f"{chinchilla.ratio_text(tokens, n)}",
      f"compute: C = 6*N*D = {6 * n * tokens:.3e} FLOPs; compute-optimal "
      f"({verdict.floor_ratio}*N, {verdict.steps_needed:,} steps) = {6 * n * optimal_tokens:.3e} "
      f"FLOPs",
  ]
  if tokens_per_sec is not None:
    lines.append(
        f"time: planned run {steps:,} steps ~ {human_duration(tokens / tokens_per_sec)}; "
        f"compute-optimal needs {verdict.steps_needed:,} steps ~ "
        f"{human_duration(optimal_tokens / tokens_per_sec)} at {tokens_per_sec:,.0f} tokens/s")
  unique, source = unique_train_tokens(config.get("data", ConfigDict()), data_dir)
  if unique is None:
    lines.append(f"data: repetition report skipped: {source}")
  else:
    lines.extend(repetition.report(tokens, unique, n_params=n, source=source).lines())
  lines.append(verdict.message())
  return lines, verdict


def main(argv: list[str]) -> int:
  del argv
  if FLAGS.config is None:
    raise ConfigError("no experiment config: pass --config=configs/<experiment>.py")
  lines, verdict = plan(FLAGS.config, tokens_per_sec=FLAGS.tokens_per_sec,
                        data_dir=FLAGS.data_dir, bypass=FLAGS.force_under_provisioned)
  print("\n".join(lines))
  return 0 if verdict.proceeds else chinchilla.ChinchillaGateError.exit_code


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags)


if __name__ == "__main__":
  run()
