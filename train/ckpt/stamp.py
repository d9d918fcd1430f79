"""Salvage: write pregate metadata for a checkpoint that has none (or has wrong metadata), so it
can be verified and loaded again (the library behind `pregate-stamp`).

Salvage, not forgery: the config's abstract parameter signature must equal orbax's stored one
exactly (every path, shape and dtype, read from orbax's array metadata, never array data), or
nothing is written (ArchitectureMismatchError listing every difference, exit 2). Arrays are never
touched. What neither the tensors nor the config can tell (val loss and its eval batches, tokens
seen, the gate verdict, the data fingerprint, the mesh at save, why training ended) is written as
null and listed in `stamped.unknown`, so `pregate-inspect --quality` counts it as missing instead
of trusting a guess; git commit and library versions are the stamping environment's.

The file is replaced atomically (a temp file in `<step>/meta/`, then os.replace), and an existing
one is first copied to `<step>/meta/metadata.bak-<UTC time>`. orbax restores only the items a
caller asks for and pregate reads the metadata file directly, so a `meta` dir created here after
the save loads with `load_for_eval` like any other (tests/test_inspect_stamp.py).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any

from core.errors import CheckpointError, ConfigError, DataError
from core.jsonio import write_json_atomic
from core.paths import resolve_path
from gates import arch_match, chinchilla
from models.config import ModelConfig
from models.params import abstract_model, count_params, param_shapes
from train.ckpt import metadata, quality
from train.ckpt.checkpointer import Checkpointer
from train.ckpt.stepspec import locate
from train.data.prepare import read_corpus
from train.data.tokenizer import KINDS, Tokenizer, build_tokenizer


def _tokenizer(data_cfg: dict[str, Any], kind: str | None,
               corpus: str | None) -> tuple[Tokenizer, dict[str, Any]]:
  """The tokenizer and where it came from; char needs the corpus text it was built from."""
  kind = kind or data_cfg["tokenizer"]
  if kind not in KINDS:
    raise DataError(f"unknown tokenizer kind {kind!r}; use one of {', '.join(KINDS)}")
  if kind == "byte":
    return build_tokenizer(kind), {"type": kind}
  path = os.path.abspath(corpus or resolve_path(data_cfg["corpus"]))
  text, sha, _ = read_corpus(path)
  return build_tokenizer(kind, text), {"type": kind, "corpus": path, "corpus_sha256": sha}


def write_atomic(meta_dir: str, meta: dict[str, Any]) -> str | None:
  """Replace `meta_dir/metadata` in one rename, backing up an existing file; -> backup path."""
  target = os.path.join(meta_dir, "metadata")
  backup = None
  try:
    os.makedirs(meta_dir, exist_ok=True)
    if os.path.exists(target):
      now = datetime.datetime.now(datetime.UTC)
      backup = f"{target}.bak-{now:%Y%m%dT%H%M%S.%fZ}"
      shutil.copy2(target, backup)
    write_json_atomic(target, meta)
  except OSError as e:
    raise CheckpointError(f"cannot write {target}: {e}") from e
  return backup


def stamp(path: str, config: Any, step: str | None = None, tokenizer_kind: str | None = None,
          corpus: str | None = None) -> list[str]:
  """Verify the config against the stored tensors, then write the metadata; -> report lines."""
  if config is None:
    raise ConfigError("no config: pass --config=<the config the checkpoint was trained with>")
  cfg = config.to_dict()
  model_cfg = ModelConfig.from_dict(cfg["model"])
  directory, spec = locate(path, step)
  ckpt = Checkpointer(directory, read_only=True)
  try:
    resolved = ckpt.resolve(spec)
    stored, steps = ckpt.array_signature(resolved), ckpt.steps()
  finally:
    ckpt.close()
  expected = param_shapes(abstract_model(model_cfg))
  diffs = arch_match.signature_differences(expected, stored)
  if diffs:
    raise arch_match.ArchitectureMismatchError(f"checkpoint {directory}/{resolved}", diffs)
  tok, tokenizer_from = _tokenizer(cfg["data"], tokenizer_kind, corpus)
  if tok.vocab_size != model_cfg.vocab_size:
    raise DataError(f"the {tokenizer_from['type']} tokenizer has {tok.vocab_size} symbols but "
                    f"model.vocab_size={model_cfg.vocab_size}; pass the --corpus/--tokenizer "
                    f"the checkpoint was trained with")
  meta_dir = os.path.join(directory, str(resolved), "meta")
  old = _previous(os.path.join(meta_dir, "metadata"))
  batch = cfg["batch"]
  meta = metadata.stamp_record(
      config=cfg, model_cfg=model_cfg, counts=count_params(model_cfg),
      tokenizer=tok.to_json(), signature=expected, step=resolved,
      planned_tokens=chinchilla.planned_tokens(cfg["train_steps"], batch["global_batch"],
                                               batch["seq_len"]),
      replaced=old is not None, tokenizer_from=tokenizer_from)
  backup = write_atomic(meta_dir, meta)
  lines = [f"stamped {meta_dir}/metadata " + (f"(replaced; the previous file is kept at {backup})"
                                              if backup else "(new file)"),
           f"verified: the config's {len(expected)} parameter tensors equal the stored ones "
           f"(paths, shapes, dtypes); no array was read or written",
           f"tokenizer: {tok.vocab_size} symbols, " + ", ".join(
               f"{k}={v}" for k, v in tokenizer_from.items()),
           "left null (not recoverable from tensors + config): "
           + ", ".join(metadata.STAMP_UNKNOWN)]
  if isinstance(old, dict):
    claimed = old.get("model") if isinstance(old.get("model"), dict) else {}
    wrong = arch_match.config_differences(model_cfg.to_dict(), claimed)
    lines.append("the replaced metadata " + ("disagreed with the tensors: " + "; ".join(wrong)
                                             if wrong else "had the same model config"))
  elif old is not None:
    lines.append(f"the replaced metadata was {old}")
  return lines + quality.summary(directory, resolved, steps, meta, stored)


def _previous(path: str) -> dict[str, Any] | str | None:
  """The metadata about to be replaced: its JSON, a description if unusable, None if absent."""
  try:
    with open(path) as f:
      old = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    return f"unreadable ({e})"
  return old if isinstance(old, dict) else "not a JSON object"
