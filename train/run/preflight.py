"""Everything that can refuse a run, with nothing compiled and nothing written.

Order: the config's sanity, the model config, N from the abstract model (no compile), the
Chinchilla gate, the workdir and its owner, `--init`'s path, the corpus. A refusal here costs
one JAX import and leaves the disk untouched.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from core.errors import ConfigError
from gates import chinchilla, config_sanity
from models.config import ModelConfig
from models.params import ParamCounts, count_params
from train.ckpt.stepspec import split_path_step
from train.data import spec as data_spec
from train.run import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run that may start: its model, counts, gate verdict and accepted config changes."""

  model_cfg: ModelConfig
  counts: ParamCounts
  verdict: chinchilla.Verdict
  changes: dict[str, list[str]]


def preflight(config: Any, workdir: str, force: bool, init: str = "",
              allow_change: bool = False) -> Plan:
  if config is None:
    raise ConfigError("no experiment config: pass --config=configs/<name>.py")
  if not workdir:
    raise ConfigError("no run directory: pass --workdir=DIR")
  cfg = config.to_dict()
  config_sanity.check(cfg)
  model_cfg = ModelConfig.from_dict(cfg["model"])
  counts = count_params(model_cfg)
  batch = cfg["batch"]
  tokens = chinchilla.planned_tokens(cfg["train_steps"], batch["global_batch"], batch["seq_len"])
  verdict = chinchilla.evaluate(counts.total, counts.non_embedding, tokens,
                                batch["global_batch"] * batch["seq_len"], bypass=force)
  chinchilla.enforce(verdict)
  workdir_lib.check_usable(workdir)
  changes = workdir_lib.check_owner(workdir, cfg, allow_change)
  if init and not os.path.isdir(split_path_step(init)[0]):
    raise ConfigError(f"--init={init}: no such checkpoint directory; pass a run's workdir or "
                      f"checkpoints dir, optionally with :STEP")
  _check_corpus(cfg["data"], model_cfg.vocab_size)
  return Plan(model_cfg, counts, verdict, changes)


def _check_corpus(data_cfg: dict[str, Any], model_vocab: int) -> None:
  """Missing/empty inputs, globs matching nothing, bad mixture weights, an unusable or too
  large tokenizer fail here, before the workdir is created (stat and small reads only); the
  documents themselves are checked while preparing, still before anything compiles."""
  data_spec.check(data_cfg, model_vocab)
