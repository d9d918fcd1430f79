"""Everything that can refuse a run, with nothing compiled and nothing written.

Order: the config's sanity (every field), the model config, N from the abstract model (no
compile), the Chinchilla gate, the workdir and its owner, `--init`'s checkpoint (its step, its
metadata against the config and tokenizer, from files alone), the corpus, eval.tasks' task
files, a distillation teacher's files (train/run/teacher.py: vocabulary, tokenizer, the
workdir's recorded teacher), then the execution settings the platform cannot run
(train/runtime/platform.py).
A refusal here costs one JAX import and leaves the disk untouched. What needs the devices
(the mesh, the stored arrays, the fingerprint) is checked by the loop, still before anything is
written.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from core import contracts
from core.errors import ConfigError
from core.paths import data_dirs, resolve_path
from gates import arch_match, chinchilla, chinchilla_contract, config_sanity
from models.config import ModelConfig
from models.params import ParamCounts, count_params
from train.ckpt import metadata
from train.ckpt.stepspec import checkpoint_dir, resolve_on_disk, split_path_step
from train.data import spec as data_spec
from train.data import unique_tokens
from train.data.tokenizer import build_tokenizer
from train.hf import importer
from train.run import tasks_edge, teacher
from train.run import workdir as workdir_lib
from train.runtime import platform


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run that may start: its model, counts, gate verdict and accepted config changes."""

  model_cfg: ModelConfig
  counts: ParamCounts
  verdict: chinchilla.Verdict
  changes: dict[str, list[str]]


def preflight(config: Any, workdir: str, force: bool, init: str = "",
              allow_change: bool = False, init_tokens: int = -1) -> Plan:
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
  contract = chinchilla_contract.parse(contracts.load(chinchilla.CONTRACT))
  record = _init_record(init, workdir)
  verdict = chinchilla.evaluate(contract, counts.total, counts.non_embedding, tokens,
                                batch["global_batch"] * batch["seq_len"], bypass=force,
                                unique_tokens=unique_tokens.for_gate(cfg["data"]),
                                prior=_prior(contract, init, init_tokens, workdir, record))
  chinchilla.enforce(verdict)
  workdir_lib.check_usable(workdir)
  changes = workdir_lib.check_owner(workdir, cfg, allow_change)
  if init and importer.is_hf_init(init):
    importer.check(init[len(importer.INIT_PREFIX):])  # headers only: nothing compiled
  elif init and not os.path.isdir(split_path_step(init)[0]):
    raise ConfigError(f"--init={init}: no such checkpoint directory; pass a run's workdir or "
                      f"checkpoints dir (optionally with :STEP), or hf:DIR")
  _check_corpus(cfg["data"], model_cfg.vocab_size)
  tasks_edge.check_paths(cfg["eval"]["tasks"])  # each task file parses, before any compile
  if record is not None:
    _check_init(init, record, cfg, model_cfg, workdir)
  if cfg["distill"]["teacher"]:
    teacher.check_files(cfg["distill"]["teacher"], model_cfg, batch["seq_len"],
                        lambda: _run_tokenizer(cfg["data"], workdir), workdir)
  platform.check(model_cfg)
  return Plan(model_cfg, counts, verdict, changes)


def _init_record(init: str, workdir: str) -> tuple[str, metadata.Metadata] | None:
  """(directory/step, metadata) of --init=PATH's checkpoint for a fresh run, read once for the
  gate's P and the architecture check; None without such an --init, for hf:, or when the
  workdir resumes its own checkpoints. A missing step or record is refused here."""
  if (not init or importer.is_hf_init(init) or not os.path.isdir(split_path_step(init)[0])
      or workdir_lib.has_checkpoints(workdir)):
    return None
  path, step = split_path_step(init)
  directory = checkpoint_dir(path)
  resolved = resolve_on_disk(directory, step)
  where = f"{directory}/{resolved}"
  return where, metadata.require(metadata.read(directory, resolved), where)


def _prior(contract: chinchilla.ChinchillaContract, init: str, init_tokens: int,
           workdir: str, record: tuple[str, metadata.Metadata] | None
           ) -> chinchilla.Prior | None:
  """P, the tokens a warm start's weights already saw (contract v1.3): a resumed run's own
  record (its tokens are the run's, never counted twice), a pregate checkpoint's record, or the
  operator's --init_tokens for an HF directory, which records none."""
  hf = bool(init) and importer.is_hf_init(init)
  if init_tokens >= 0 and not hf:
    why = (f"--init={init} is a pregate checkpoint, which records its own" if init
           else "there is no --init=hf:DIR")
    raise ConfigError(f"--init_tokens={init_tokens} declares the prior tokens of an HF warm "
                      f"start; {why}: drop --init_tokens")
  recorded = _recorded_gate(workdir)
  if recorded is not None:
    tokens = recorded.get("prior_tokens") or 0
    return chinchilla.Prior(int(tokens), str(recorded.get("prior_source", ""))) if tokens else None
  if hf:
    if init_tokens < 0:
      raise ConfigError(f"--init={init}: a Hugging Face directory does not record the tokens its "
                        f"weights were trained on, and the gate will not guess them: declare "
                        f"them with --init_tokens=T (e.g. from the model card; 0 judges the run "
                        f"as if fresh)")
    return chinchilla.Prior(init_tokens, f"--init_tokens for {init}") if init_tokens else None
  if record is None:
    return None
  where, meta = record
  if not isinstance(meta.tokens_seen, int):
    raise ConfigError(f"--init={init}: checkpoint {where} records no tokens_seen "
                      f"(a stamped or imported checkpoint), so its prior tokens are unknown: "
                      f"stamp it with a known count or warm-start it through hf: with "
                      f"--init_tokens=T")
  return chinchilla.prior_from_record(contract, meta.gate, meta.tokens_seen,
                                      f"checkpoint {where}: {meta.tokens_seen:,} tokens seen")


def _recorded_gate(workdir: str) -> dict[str, Any] | None:
  """The gate record of a run that has started in `workdir` (gate.json), else None."""
  if not workdir_lib.has_checkpoints(workdir):
    return None
  try:
    with open(os.path.join(workdir, "gate.json")) as f:
      gate = json.load(f)
  except (OSError, ValueError):
    return None
  return gate if isinstance(gate, dict) else None


def _check_init(init: str, record: tuple[str, metadata.Metadata], cfg: dict[str, Any],
                model_cfg: ModelConfig, workdir: str) -> None:
  """--init's metadata (`_init_record`: its step exists and its record is readable) matches the
  config and the run's tokenizer: a foreign checkpoint is refused before the workdir is
  created."""
  where, meta = record
  source = f"--init={init}: checkpoint {where}"
  diffs = arch_match.config_differences(model_cfg.to_dict(), meta.model)
  diffs += arch_match.tokenizer_differences(_run_tokenizer(cfg["data"], workdir),
                                            meta.tokenizer)
  if diffs:
    raise arch_match.ArchitectureMismatchError(source, diffs)


def _run_tokenizer(data_cfg: dict[str, Any], workdir: str) -> dict[str, Any] | None:
  """The tokenizer the run will use, without preparing anything: the prepared data's, else
  the one preparing would build from the corpus (None for a remote corpus)."""
  data_dir = data_dirs(data_cfg, workdir)[0]
  corpus = resolve_path(data_cfg["corpus"])
  if "://" in data_dir + corpus:
    return None
  try:
    with open(os.path.join(data_dir, "manifest.json")) as f:
      return json.load(f)["tokenizer"]
  except (OSError, ValueError, KeyError, TypeError):
    pass
  if data_cfg["tokenizer"] not in ("char", "byte"):
    return None  # built by the preparation; the warm start checks it again before any array
  from train.data.prepare import read_corpus  # tensorstore: only for a warm start
  return build_tokenizer(data_cfg["tokenizer"], read_corpus(corpus)[0]).to_json()


def _check_corpus(data_cfg: dict[str, Any], model_vocab: int) -> None:
  """Missing/empty inputs, globs matching nothing, bad mixture weights, an unusable or too
  large tokenizer fail here, before the workdir is created (stat and small reads only); the
  documents themselves are checked while preparing, still before anything compiles."""
  data_spec.check(data_cfg, model_vocab)
