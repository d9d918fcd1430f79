"""Everything that can refuse a run, with nothing compiled and nothing written.

Order: the config's sanity, the model config, N from the abstract model (no compile), the
Chinchilla gate, the workdir and its owner, `--init`'s path, the corpus. A refusal here costs
one JAX import and leaves the disk untouched.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from core.errors import ConfigError, DataError
from core.paths import resolve_path
from gates import chinchilla, config_sanity, unique_tokens
from models.config import ModelConfig
from models.params import ParamCounts, count_params
from train.ckpt.stepspec import split_path_step
from train.hf import importer
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
                                batch["global_batch"] * batch["seq_len"], bypass=force,
                                unique_tokens=unique_tokens.for_gate(cfg["data"]))
  chinchilla.enforce(verdict)
  workdir_lib.check_usable(workdir)
  changes = workdir_lib.check_owner(workdir, cfg, allow_change)
  if init and importer.is_hf_init(init):
    importer.check(init[len(importer.INIT_PREFIX):])  # headers only: nothing compiled
  elif init and not os.path.isdir(split_path_step(init)[0]):
    raise ConfigError(f"--init={init}: no such checkpoint directory; pass a run's workdir or "
                      f"checkpoints dir (optionally with :STEP), or hf:DIR")
  _check_corpus(cfg["data"])
  return Plan(model_cfg, counts, verdict, changes)


def _check_corpus(data_cfg: dict[str, Any]) -> None:
  """A missing/empty corpus fails here, before the workdir is created (cheap: stat only)."""
  if data_cfg["data_dir"] and os.path.exists(os.path.join(
      resolve_path(data_cfg["data_dir"]), "manifest.json")):
    return
  corpus = resolve_path(data_cfg["corpus"])
  if "://" in corpus:
    return
  if not os.path.isfile(corpus):
    raise DataError(f"corpus file {data_cfg['corpus']} does not exist; set "
                    f"--config.data.corpus to a text file")
  if os.path.getsize(corpus) == 0:
    raise DataError(f"corpus file {data_cfg['corpus']} is empty; point "
                    f"--config.data.corpus at a non-empty text file")
