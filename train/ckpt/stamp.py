"""Salvage: write pregate metadata for a checkpoint that has none (or has wrong metadata), so it
can be verified and loaded again (the library behind `pregate-stamp`).

Salvage, not forgery: the config's abstract parameter signature must equal orbax's stored one
exactly (every path, shape and dtype, read from orbax's array metadata), or nothing is written
(ArchitectureMismatchError listing every difference, exit 2). Shapes cannot prove rope_theta,
norm_eps, the compute dtype or the head split, so the stamp then proves itself on held-out text
(`--heldout=FILE`, default: the validation split of the config's corpus; train/ckpt/heldout.py):
the claimed config must score clearly below the random level ln V, near `--expect_loss` when
the operator states it, and no same-shape alternative (another head split, a common rope_theta)
may score clearly better; otherwise nothing is written. The record then carries the functional
fingerprint of the proven config, so every later load re-proves it. Arrays are read, never
written. What neither the tensors nor the config can tell (val loss and its eval batches, tokens
seen, the gate verdict, the data fingerprint, the mesh at save, why training ended) is written as
null and listed in `stamped.unknown`, so `pregate-inspect --quality` counts it as missing instead
of trusting a guess; git commit and library versions are the stamping environment's.

The file is replaced atomically (a temp file in `<step>/meta/`, then os.replace), and an existing
one is first copied to `<step>/meta/metadata.bak-<UTC time>`. orbax restores only the items a
caller asks for and pregate reads the metadata file directly, so a `meta` dir created here after
the save loads with `load_for_eval` like any other (tests/test_inspect_stamp.py).
"""
from __future__ import annotations

import math
import os
from typing import Any

import optax

from core.errors import ConfigError, DataError
from core.paths import resolve_path
from gates import arch_match, chinchilla
from models.config import ModelConfig
from models.params import abstract_model, count_params, param_shapes
from train.ckpt import fingerprint, heldout, metadata, quality, restore
from train.ckpt.checkpointer import Checkpointer
from train.ckpt.stepspec import locate
from train.data.prepare import read_corpus
from train.data.tokenizer import KINDS, Tokenizer, build_tokenizer
from train.state.setup import TrainSetup


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


def _prove(directory: str, step: int, model_cfg: ModelConfig, tok: Tokenizer,
           held: heldout.Heldout,
           seq_len: int, expect_loss: float | None, tolerance: float,
           check_alternatives: bool) -> tuple[dict[str, Any], dict[str, Any]]:
  """Restore the parameters, score the claimed config (and its same-shape alternatives) on the
  held-out text, refuse a refuted claim; -> (fingerprint, what verified it)."""
  setup = TrainSetup.build(model_cfg, optax.identity(), 0, restore.default_mesh())
  ckpt = Checkpointer(directory, read_only=True)
  try:
    params = ckpt.restore(step, params_target=setup.targets()[0])["params"]
  finally:
    ckpt.close()
  loss = heldout.loss(params, model_cfg, held, seq_len)
  alternatives = {name: heldout.loss(params, alt, held, seq_len)
                  for name, alt in heldout.alternatives(model_cfg)} if check_alternatives else {}
  problems = arch_match.stamp_proof_problems(loss, model_cfg.vocab_size, expect_loss, tolerance,
                                             alternatives)
  if problems:
    raise arch_match.ArchitectureMismatchError(
        f"checkpoint {directory}/{step} (run as the --config given, on {held.source})", problems)
  verified = {"heldout": held.source, "heldout_sha256": held.sha256,
              "heldout_tokens": int(len(held.ids) - 1), "loss": round(loss, 6),
              "random_loss": round(math.log(model_cfg.vocab_size), 6),
              "expected_loss": expect_loss, "tolerance": tolerance if expect_loss else None,
              "alternatives": {k: round(v, 6) for k, v in alternatives.items()}}
  return fingerprint.compute(params, model_cfg, tokenizer=tok), verified


def stamp(path: str, config: Any, step: str | None = None, tokenizer_kind: str | None = None,
          corpus: str | None = None, heldout_path: str | None = None,
          expect_loss: float | None = None, loss_tolerance: float = 0.05,
          check_alternatives: bool = True) -> list[str]:
  """Verify the config against the stored tensors (shapes, then behaviour on held-out text),
  then write the metadata with a fingerprint; -> report lines."""
  if config is None:
    raise ConfigError("no config: pass --config=<the config the checkpoint was trained with>")
  if expect_loss is not None and not (math.isfinite(expect_loss) and expect_loss > 0):
    raise ConfigError(f"--expect_loss={expect_loss} must be a positive number (the loss the "
                      f"checkpoint reached, e.g. its last logged val loss)")
  if not (math.isfinite(loss_tolerance) and 0 < loss_tolerance < 1):
    raise ConfigError(f"--loss_tolerance={loss_tolerance} must lie in (0, 1) (relative)")
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
  held = heldout.load(tok, heldout_path, cfg["data"], corpus)
  fp, verified = _prove(directory, resolved, model_cfg, tok, held, cfg["batch"]["seq_len"],
                        expect_loss, loss_tolerance, check_alternatives)
  meta_dir = os.path.join(directory, str(resolved), "meta")
  old = metadata.previous(directory, resolved)
  batch = cfg["batch"]
  meta = metadata.stamp_record(
      config=cfg, model_cfg=model_cfg, counts=count_params(model_cfg),
      tokenizer=tok.to_json(), signature=expected, step=resolved,
      planned_tokens=chinchilla.planned_tokens(cfg["train_steps"], batch["global_batch"],
                                               batch["seq_len"]),
      replaced=old is not None, tokenizer_from=tokenizer_from, fingerprint=fp,
      verified=verified)
  backup = metadata.write_file(directory, resolved, meta)
  lines = [f"stamped {meta_dir}/metadata " + (f"(replaced; the previous file is kept at {backup})"
                                              if backup else "(new file)"),
           f"verified: the config's {len(expected)} parameter tensors equal the stored ones "
           f"(paths, shapes, dtypes); arrays were read, none written",
           f"verified: held-out loss {verified['loss']:.4f} on {held.source} "
           f"({verified['heldout_tokens']:,} tokens; random level ln V = "
           f"{verified['random_loss']:.4f}" + (f"; stated {expect_loss:.4f}" if expect_loss
                                              else "") + ")",
           "verified: no same-shape alternative scores clearly better (" + ", ".join(
               f"{k} {v:.4f}" for k, v in verified["alternatives"].items()) + ")"
           if verified["alternatives"] else "alternatives not checked (--nocheck_alternatives)",
           f"recorded: functional fingerprint ({fp['probe']['batch']}x{fp['probe']['length']} "
           f"probe, {fp['dtype']}), so every later load proves the non-shape fields",
           f"tokenizer: {tok.vocab_size} symbols, " + ", ".join(
               f"{k}={v}" for k, v in tokenizer_from.items()),
           "left null (not recoverable from tensors + config): "
           + ", ".join(metadata.STAMP_UNKNOWN)]
  if isinstance(old, metadata.Metadata):
    claimed = old.model if isinstance(old.model, dict) else {}
    wrong = arch_match.config_differences(model_cfg.to_dict(), claimed)
    lines.append("the replaced metadata " + ("disagreed with the tensors: " + "; ".join(wrong)
                                             if wrong else "had the same model config"))
  elif old is not None:
    lines.append(f"the replaced metadata was {old}")
  return lines + quality.summary(directory, resolved, steps, meta, stored)
