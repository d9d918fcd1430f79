"""`python -m train.inspect PATH [--step=latest|best|N] [--json] [--quality]`: what a checkpoint
says about itself, and how far that can be trusted, before anyone spends compute loading it.

PATH is a run's workdir, its checkpoints dir, or one step dir (`<ckptdir>/<step>`). Only the JSON
metadata and orbax's array metadata (paths, shapes, dtypes) are read, never array data, so it is
fast on any size and safe on damaged checkpoints. Unreadable metadata or a missing step is one
`ERROR:` line (exit 2); a checkpoint without metadata is reported (exit 0) with the fix.

`--quality` scores 0-100 as six sub-scores. Loadability (can the model be rebuilt from the
metadata alone, and do the tensors agree) weighs most; provenance the rest. Every lost point
is listed with what is missing or wrong:
  identity 10             schema 4; architecture family, hf_class, model_type 2 each
  model config 25         each of the 12 ModelConfig fields present with its type 2; the whole
                          is a valid ModelConfig 1
  tokenizer 15            embedded 5, known type 3, vocabulary rebuilds 3, size == vocab_size 4
  data provenance 15      manifest fingerprint: source_sha256 3; train_sha256, val_sha256,
                          tokenizer_fingerprint 2 each; train_tokens, val_tokens, val_fraction,
                          format_version 1 each; tokenizer_fingerprint == the embedded tokenizer 2
  training provenance 15  step 2, tokens_seen 2, planned_tokens 2, gate verdict 2, git_commit 2,
                          libraries 2, mesh 1, config 1, config.model == model 1
  signature 20            the model config's abstract param signature == orbax's stored one 12;
                          a `signature` key, when present, == stored 4; param_counts == stored 4
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from typing import Any, NoReturn

from absl import app, flags

from gates import arch_match
from gates.errors import ConfigError, PregateError
from models.config import ModelConfig, ModelConfigError
from models.params import abstract_model, param_shapes
from train.checkpoint import META_SCHEMA, Checkpointer, CheckpointError
from train.restore import checkpoint_dir
from train.run_state import ARCHITECTURE
from train.sharding import AXES
from train.tokenizer import tokenizer_from_json

Signature = dict[str, tuple[tuple[int, ...], str]]
_SHA = re.compile(r"[0-9a-f]{64}")
_DATA_FIELDS = {"source_sha256": 3, "train_sha256": 2, "val_sha256": 2,
                "tokenizer_fingerprint": 2, "train_tokens": 1, "val_tokens": 1,
                "val_fraction": 1, "format_version": 1}
STAMP_HINT = "python -m train.stamp {path} --config=<the config it was trained with>"


def fail(err: BaseException, verbose: bool = False) -> NoReturn:
  """One `ERROR: <Type>: msg` line on stderr and the error's exit code (as train.main does)."""
  if verbose:
    import traceback
    traceback.print_exception(err)
  print(f"ERROR: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
  sys.exit(getattr(err, "exit_code", 2))


def locate(path: str, step: str | None) -> tuple[str, str]:
  """PATH (workdir, checkpoints dir or a step dir) and --step -> (checkpoints dir, step spec)."""
  path = os.path.abspath(path)
  name = os.path.basename(path)
  is_step_dir = name.isdigit() and not os.path.isdir(os.path.join(path, "checkpoints")) and any(
      os.path.exists(os.path.join(path, f)) for f in ("_CHECKPOINT_METADATA", "params", "meta"))
  if not is_step_dir:
    return checkpoint_dir(path), step or "latest"
  if step is not None and step != name:
    raise ConfigError(f"{path} is the dir of step {name} but --step={step}; pass the "
                      f"checkpoints dir with --step, or the step dir alone")
  return os.path.dirname(path), name


def stored_signature(ckpt: Checkpointer, step: int) -> Signature:
  """orbax's array signature, with any failure to read it as a CheckpointError."""
  try:
    return ckpt.array_signature(step)
  except CheckpointError:
    raise
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"checkpoint {ckpt.directory}/{step}: stored array metadata is "
                          f"unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from e


@dataclasses.dataclass
class Loaded:
  directory: str
  step: int
  steps: list[int]
  meta: dict[str, Any] | None
  stored: Signature | None
  stored_error: str | None


def load(path: str, step: str | None) -> Loaded:
  """Resolve the step and read its metadata (must parse) and stored signature (may fail)."""
  directory, spec = locate(path, step)
  ckpt = Checkpointer(directory, read_only=True)
  try:
    resolved = ckpt.resolve(spec)
    meta = ckpt.read_meta(resolved)
    if meta is not None and not isinstance(meta, dict):
      raise CheckpointError(f"checkpoint {directory}/{resolved}: metadata is a JSON "
                            f"{type(meta).__name__}, not an object; re-stamp it: "
                            + STAMP_HINT.format(path=f"{directory}/{resolved}"))
    try:
      stored, error = stored_signature(ckpt, resolved), None
    except CheckpointError as e:
      stored, error = None, str(e)
    return Loaded(directory, resolved, ckpt.steps(), meta, stored, error)
  finally:
    ckpt.close()


class _Sub:
  """One sub-score: starts full, and every failed check records its points and reason."""

  def __init__(self, weight: int):
    self.weight, self.lost = weight, []

  def need(self, ok: bool, points: int, reason: str) -> bool:
    if not ok:
      self.lost.append({"points": points, "reason": reason})
    return ok

  def result(self) -> dict[str, Any]:
    return {"score": self.weight - sum(x["points"] for x in self.lost), "max": self.weight,
            "lost": self.lost}


def _d(x: Any) -> dict[str, Any]:
  return x if isinstance(x, dict) else {}


def _int(x: Any, low: int = 0) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _identity(meta: dict[str, Any], s: _Sub) -> None:
  s.need(meta.get("schema") == META_SCHEMA, 4,
         f"schema is {meta.get('schema', '<missing>')!r}, expected {META_SCHEMA!r}")
  arch = _d(meta.get("architecture"))
  for key, want in ARCHITECTURE.items():
    s.need(arch.get(key) == want, 2,
           f"architecture.{key} is {arch.get(key, '<missing>')!r}, expected {want!r}")


def _model_config(meta: dict[str, Any], s: _Sub) -> None:
  model = _d(meta.get("model"))
  kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
  for f in dataclasses.fields(ModelConfig):
    value = model.get(f.name)
    ok_type = isinstance(value, kinds[f.type]) and (f.type == "bool" or
                                                    not isinstance(value, bool))
    s.need(f.name in model and ok_type, 2, f"model.{f.name} " + (
        f"has type {type(value).__name__}, expected {f.type}" if f.name in model
        else "is missing"))
  try:
    ModelConfig.from_dict(model)
    s.need(True, 1, "")
  except (ModelConfigError, TypeError) as e:
    s.need(False, 1, f"model config is not a valid ModelConfig: {e}")


def _tokenizer(meta: dict[str, Any], s: _Sub) -> Any:
  tok_json = meta.get("tokenizer")
  embedded = s.need(isinstance(tok_json, dict), 5, "no tokenizer embedded")
  kind = _d(tok_json).get("type")
  s.need(kind in ("char", "byte"), 3, f"tokenizer type {kind!r} is not char or byte")
  tok = None
  if embedded:
    try:
      tok = tokenizer_from_json(tok_json)
    except PregateError as e:
      s.need(False, 3, f"tokenizer does not rebuild: {e}")
  else:
    s.need(False, 3, "tokenizer vocabulary cannot be rebuilt (no tokenizer)")
  vocab = _d(meta.get("model")).get("vocab_size")
  if tok is not None:
    s.need(tok.vocab_size == vocab, 4,
           f"tokenizer has {tok.vocab_size} symbols but model.vocab_size={vocab!r}")
  else:
    s.need(False, 4, f"model.vocab_size={vocab!r} cannot be checked against a tokenizer")
  return tok


def _data(meta: dict[str, Any], tok: Any, s: _Sub) -> None:
  data = _d(meta.get("data"))
  if not data:
    s.need(False, 13, "no data fingerprint (the manifest fields "
           + ", ".join(_DATA_FIELDS) + ")")
  else:
    for key, points in _DATA_FIELDS.items():
      value = data.get(key)
      if key.endswith(("sha256", "fingerprint")):
        ok = isinstance(value, str) and bool(_SHA.fullmatch(value))
      elif key == "val_fraction":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
      else:
        ok = _int(value)
      s.need(ok, points, f"data.{key} is " + ("missing" if value is None else f"{value!r}"))
  fp = data.get("tokenizer_fingerprint")
  s.need(tok is not None and fp == tok.fingerprint(), 2,
         "data.tokenizer_fingerprint cannot be checked (no usable tokenizer or fingerprint)"
         if tok is None or fp is None else
         "data.tokenizer_fingerprint differs from the embedded tokenizer's fingerprint")


def _training(meta: dict[str, Any], step: int | None, s: _Sub) -> None:
  got = meta.get("step")
  s.need(_int(got) and (step is None or got == step), 2,
         f"step is {got!r}" + (f", but the checkpoint dir is step {step}" if _int(got) else ""))
  for key in ("tokens_seen", "planned_tokens"):
    s.need(_int(meta.get(key), 1 if key == "planned_tokens" else 0), 2,
           f"{key} is {meta.get(key, 'missing')!r}")
  gate = _d(meta.get("gate"))
  s.need(all(k in gate for k in ("zone", "passed", "bypassed")), 2,
         "gate verdict (zone, passed, bypassed) is missing")
  commit = meta.get("git_commit")
  s.need(isinstance(commit, str) and bool(commit), 2, f"git_commit is {commit!r}")
  s.need(bool(_d(meta.get("libraries"))), 2, "library versions are missing")
  mesh = _d(meta.get("mesh"))
  s.need(all(_int(mesh.get(a), 1) for a in AXES), 1, f"mesh at save is {meta.get('mesh')!r}")
  config = _d(meta.get("config"))
  s.need(bool(config), 1, "the experiment config is missing")
  s.need(bool(config) and config.get("model") == meta.get("model"), 1,
         "config.model differs from model" if config else "config.model cannot be compared")


def _as_signature(raw: Any) -> Signature:
  return {p: (tuple(int(n) for n in v[0]), str(v[1])) for p, v in raw.items()}


def _signature(meta: dict[str, Any], stored: Signature | None, s: _Sub) -> None:
  if stored is None:
    s.need(False, 20, "orbax's stored array signature is unreadable, so nothing can be checked")
    return
  try:
    built = param_shapes(abstract_model(ModelConfig.from_dict(_d(meta.get("model")))))
    diffs = arch_match.signature_differences(built, stored)
    s.need(not diffs, 12, f"the model config's tensors differ from the stored ones "
           f"({len(diffs)}): " + "; ".join(diffs))
  except (ModelConfigError, TypeError) as e:
    s.need(False, 12, f"the model config does not build a model ({e})")
  if "signature" in meta:
    try:
      diffs = arch_match.signature_differences(_as_signature(meta["signature"]), stored)
      reason = f"the metadata's signature differs from the stored one: " + "; ".join(diffs)
    except (AttributeError, TypeError, ValueError, IndexError) as e:
      diffs, reason = [str(e)], f"the metadata's signature is malformed ({e})"
    s.need(not diffs, 4, reason)
  total = sum(math.prod(shape) for shape, _ in stored.values())
  claimed = _d(meta.get("param_counts")).get("total")
  s.need(claimed == total, 4, f"param_counts.total is {claimed!r} but the stored tensors hold "
         f"{total:,} parameters")


SUBSCORES = {"identity": 10, "model_config": 25, "tokenizer": 15, "data_provenance": 15,
             "training_provenance": 15, "signature": 20}


def quality(meta: dict[str, Any] | None, stored_signature: Signature | None,
            step: int | None = None) -> dict[str, Any]:
  """The 0-100 score of the module docstring; pure (no I/O beyond an abstract model trace)."""
  subs = {name: _Sub(w) for name, w in SUBSCORES.items()}
  if not isinstance(meta, dict):
    for s in subs.values():
      s.need(False, s.weight, "no pregate metadata; stamp it: " + STAMP_HINT.format(path="PATH"))
  else:
    _identity(meta, subs["identity"])
    _model_config(meta, subs["model_config"])
    tok = _tokenizer(meta, subs["tokenizer"])
    _data(meta, tok, subs["data_provenance"])
    _training(meta, step, subs["training_provenance"])
    _signature(meta, stored_signature, subs["signature"])
  results = {name: s.result() for name, s in subs.items()}
  return {"score": sum(r["score"] for r in results.values()), "max": 100, "subscores": results}
