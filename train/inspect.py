"""`python -m train.inspect PATH [--step=latest|best|N] [--json] [--quality]`: what a checkpoint
says about itself, and how far that can be trusted, before anyone spends compute loading it.

PATH is a run's workdir, its checkpoints dir, or one step dir (`<ckptdir>/<step>`). Only the JSON
metadata and orbax's array metadata (paths, shapes, dtypes) are read, never array data, so it is
fast at any size and safe on damaged checkpoints. Unreadable metadata or a missing step is one
`ERROR:` line (exit 2); a checkpoint without metadata is reported (exit 0) with the fix.

`--quality` scores 0-100 in six sub-scores. Loadability (can the model be rebuilt from the
metadata alone, and do the stored tensors agree) weighs most, provenance the rest; every lost
point is listed with what is missing or wrong:
  identity 10             schema 4; architecture family, hf_class, model_type 2 each
  model_config 25         each of the 12 ModelConfig fields present with its type 2; the whole
                          is a valid ModelConfig 1
  tokenizer 15            embedded 5, known type 3, rebuilds 3, size == model.vocab_size 4
  data_provenance 15      manifest fingerprint: source_sha256 3; train_sha256, val_sha256,
                          tokenizer_fingerprint 2 each; train_tokens, val_tokens, val_fraction,
                          format_version 1 each; tokenizer_fingerprint == embedded tokenizer 2
  training_provenance 15  step 2, tokens_seen 2, planned_tokens 2, gate verdict 2, git_commit 2,
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
from typing import Any, NamedTuple, NoReturn

from absl import app, flags

from gates import arch_match
from gates.errors import ConfigError, PregateError
from models.config import ModelConfig, ModelConfigError
from models.params import abstract_model, param_shapes
from train.checkpoint import META_SCHEMA, Checkpointer, CheckpointError
from train.restore import checkpoint_dir
from train.run_state import ARCHITECTURE
from train.sharding import AXES
from train.tokenizer import KINDS, tokenizer_from_json

Signature = dict[str, tuple[tuple[int, ...], str]]
STAMP_HINT = "python -m train.stamp {path} --config=<the config it was trained with>"
SUBSCORES = {"identity": 10, "model_config": 25, "tokenizer": 15, "data_provenance": 15,
             "training_provenance": 15, "signature": 20}
_SHA = re.compile(r"[0-9a-f]{64}")


def fail(err: BaseException) -> NoReturn:
  """One `ERROR: <Type>: msg` line on stderr and the error's exit code (as train.main does)."""
  print(f"ERROR: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
  sys.exit(getattr(err, "exit_code", 2))


def locate(path: str, step: str | None) -> tuple[str, str]:
  """PATH (workdir, checkpoints dir or a step dir) and --step -> (checkpoints dir, step spec)."""
  path = os.path.abspath(path)
  name = os.path.basename(path)
  if not (name.isdigit() and not os.path.isdir(os.path.join(path, "checkpoints")) and any(
      os.path.exists(os.path.join(path, f)) for f in ("_CHECKPOINT_METADATA", "params", "meta"))):
    return checkpoint_dir(path), step or "latest"
  if step is not None and step != name:
    raise ConfigError(f"{path} is the dir of step {name} but --step={step}; pass the "
                      f"checkpoints dir with --step, or the step dir alone")
  return os.path.dirname(path), name


def stored_signature(ckpt: Checkpointer, step: int) -> Signature:
  """orbax's array signature; a failure to read it is a CheckpointError."""
  try:
    return ckpt.array_signature(step)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"checkpoint {ckpt.directory}/{step}: stored array metadata is "
                          f"unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from e


class Loaded(NamedTuple):
  directory: str
  step: int
  steps: list[int]
  meta: dict[str, Any] | None
  stored: Signature | None
  stored_error: str | None


def load(path: str, step: str | None) -> Loaded:
  """Resolve the step, read its metadata (must parse if present) and stored signature."""
  directory, spec = locate(path, step)
  ckpt = Checkpointer(directory, read_only=True)
  try:
    resolved = ckpt.resolve(spec)
    meta = ckpt.read_meta(resolved)
    if meta is not None and not isinstance(meta, dict):
      raise CheckpointError(f"checkpoint {directory}/{resolved}: metadata is not a JSON object; "
                            + STAMP_HINT.format(path=f"{directory}/{resolved}"))
    try:
      stored, error = stored_signature(ckpt, resolved), None
    except CheckpointError as e:
      stored, error = None, str(e)
    return Loaded(directory, resolved, ckpt.steps(), meta, stored, error)
  finally:
    ckpt.close()


class _Sub:
  """One sub-score: starts full; every failed check records its points and the reason."""

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


def _int(x: Any, low: float = 0) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= low


def _num(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _sha(x: Any) -> bool:
  return isinstance(x, str) and bool(_SHA.fullmatch(x))


_DATA_FIELDS = {"source_sha256": (3, _sha), "train_sha256": (2, _sha), "val_sha256": (2, _sha),
                "tokenizer_fingerprint": (2, _sha), "train_tokens": (1, _int),
                "val_tokens": (1, _int), "val_fraction": (1, lambda x: _num(x) and 0 < x < 1),
                "format_version": (1, _int)}


def _identity(meta: dict[str, Any], s: _Sub) -> None:
  s.need(meta.get("schema") == META_SCHEMA, 4,
         f"schema is {meta.get('schema', '<missing>')!r}, expected {META_SCHEMA!r}")
  arch = _d(meta.get("architecture"))
  for key, want in ARCHITECTURE.items():
    s.need(arch.get(key) == want, 2,
           f"architecture.{key} is {arch.get(key, '<missing>')!r}, expected {want!r}")


def _model_config(meta: dict[str, Any], s: _Sub) -> None:
  model = _d(meta.get("model"))
  valid = {"int": _int, "float": _num, "bool": lambda x: isinstance(x, bool),
           "str": lambda x: isinstance(x, str)}
  for f in dataclasses.fields(ModelConfig):
    value = model.get(f.name)
    s.need(valid[f.type](value), 2, f"model.{f.name} is missing" if f.name not in model else
           f"model.{f.name}={value!r} is not a {f.type}")
  try:
    ModelConfig.from_dict(model)
  except (ModelConfigError, TypeError) as e:
    s.need(False, 1, f"the model config is not a valid ModelConfig: {e}")


def _tokenizer(meta: dict[str, Any], s: _Sub) -> Any:
  raw = meta.get("tokenizer")
  s.need(isinstance(raw, dict), 5, "no tokenizer embedded")
  s.need(_d(raw).get("type") in KINDS, 3,
         f"tokenizer type is {_d(raw).get('type', '<missing>')!r}, not one of {KINDS}")
  tok = None
  try:
    tok = tokenizer_from_json(raw)
  except PregateError as e:
    s.need(False, 3, f"the tokenizer does not rebuild ({e})")
  vocab = _d(meta.get("model")).get("vocab_size")
  s.need(tok is not None and tok.vocab_size == vocab, 4,
         f"tokenizer size {tok.vocab_size if tok else '<unknown>'} is not model.vocab_size "
         f"{vocab!r}")
  return tok


def _data(meta: dict[str, Any], tok: Any, s: _Sub) -> None:
  data = _d(meta.get("data"))
  if not data:
    s.need(False, 13, "no data fingerprint (manifest fields " + ", ".join(_DATA_FIELDS) + ")")
  for key, (points, valid) in _DATA_FIELDS.items() if data else ():
    s.need(valid(data.get(key)), points, f"data.{key} is {data.get(key, '<missing>')!r}")
  fp = data.get("tokenizer_fingerprint")
  s.need(tok is not None and fp == tok.fingerprint(), 2,
         "data.tokenizer_fingerprint differs from the embedded tokenizer's" if tok and fp else
         "data.tokenizer_fingerprint cannot be checked (no usable tokenizer or fingerprint)")


def _training(meta: dict[str, Any], step: int | None, s: _Sub) -> None:
  m, config = meta, _d(meta.get("config"))
  checks = [("step", 2, _int(m.get("step")) and step in (None, m.get("step"))),
            ("tokens_seen", 2, _int(m.get("tokens_seen"))),
            ("planned_tokens", 2, _int(m.get("planned_tokens"), 1)),
            ("gate", 2, all(k in _d(m.get("gate")) for k in ("zone", "passed", "bypassed"))),
            ("git_commit", 2, isinstance(m.get("git_commit"), str) and bool(m["git_commit"])),
            ("libraries", 2, bool(_d(m.get("libraries")))),
            ("mesh", 1, all(_int(_d(m.get("mesh")).get(a), 1) for a in AXES)),
            ("config", 1, bool(config))]
  for key, points, ok in checks:
    value = repr(m[key]) if key in m else "missing"
    s.need(ok, points, f"{key} is {value if len(value) < 80 else value[:77] + '...'}" +
           (f" (the checkpoint dir is step {step})" if key == "step" else ""))
  s.need(bool(config) and config.get("model") == m.get("model"), 1,
         "config.model differs from model" if config else "no config.model to compare")


def _signature(meta: dict[str, Any], stored: Signature | None, s: _Sub) -> None:
  if stored is None:
    s.need(False, 20, "orbax's stored array signature is unreadable, so nothing can be checked")
    return
  try:
    diffs = arch_match.signature_differences(
        param_shapes(abstract_model(ModelConfig.from_dict(_d(meta.get("model"))))), stored)
    s.need(not diffs, 12, f"the model config's tensors differ from the stored ones "
           f"({len(diffs)}): " + "; ".join(diffs))
  except (ModelConfigError, TypeError) as e:
    s.need(False, 12, f"the model config does not build a model to compare ({e})")
  if "signature" in meta:
    try:
      claimed = {p: (tuple(int(n) for n in v[0]), str(v[1]))
                 for p, v in meta["signature"].items()}
      diffs = arch_match.signature_differences(claimed, stored)
      s.need(not diffs, 4, "the metadata's signature differs from the stored one: "
             + "; ".join(diffs))
    except (AttributeError, TypeError, ValueError, IndexError) as e:
      s.need(False, 4, f"the metadata's signature is malformed ({e})")
  total = sum(math.prod(shape) for shape, _ in stored.values())
  claimed_total = _d(meta.get("param_counts")).get("total")
  s.need(claimed_total == total, 4, f"param_counts.total is {claimed_total!r} but the stored "
         f"tensors hold {total:,} parameters")


def quality(meta: dict[str, Any] | None, stored_signature: Signature | None,
            step: int | None = None) -> dict[str, Any]:
  """The 0-100 score of the module docstring. Pure: reads nothing, traces an abstract model."""
  subs = {name: _Sub(weight) for name, weight in SUBSCORES.items()}
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


def _v(x: Any) -> str:
  """A value for people: thousands separators, hashes shortened, '<missing>' for null."""
  if x is None:
    return "<missing>"
  if _int(x, -math.inf):
    return f"{x:,}"
  return x[:12] + "..." if _sha(x) else f"{x:.4f}" if isinstance(x, float) else str(x)


def _kv(d: Any, keys: tuple[str, ...] = ()) -> str:
  return ", ".join(f"{k}={_v(_d(d).get(k))}" for k in keys or _d(d)) or "<missing>"


def summary(info: Loaded) -> list[str]:
  """The metadata as labelled lines; every null or absent field shows as '<missing>'."""
  rows = [("checkpoint", f"{info.directory}/{info.step} (steps on disk: {info.steps})"),
          ("stored", info.stored_error or f"{len(info.stored)} tensors, {sum(
              math.prod(s) for s, _ in info.stored.values()):,} parameters (orbax metadata)")]
  m = info.meta
  if m is None:
    rows += [("metadata", "NONE: no meta/metadata, so the architecture, tokenizer and "
                          "provenance are unknown and the checkpoint cannot be loaded"),
             ("fix", STAMP_HINT.format(path=f"{info.directory}/{info.step}"))]
    return [f"{k:<13} {v}" for k, v in rows]
  tok, gate = _d(m.get("tokenizer")), _d(m.get("gate"))
  vocab = len(tok["vocab"]) if isinstance(tok.get("vocab"), str) else (
      256 if tok.get("type") == "byte" else None)
  rows += [
      ("schema", _v(m.get("schema"))), ("architecture", _kv(m.get("architecture"))),
      ("model", _kv(m.get("model"))), ("params", _kv(m.get("param_counts"))),
      ("tokenizer", f"type={_v(tok.get('type'))}, vocab_size={_v(vocab)}"),
      ("data", _kv(m.get("data"))), ("step", _kv(m, ("step", "termination"))),
      ("tokens", _kv(m, ("tokens_seen", "planned_tokens"))),
      ("val loss", _kv(m, ("val_loss", "best_val_loss"))),
      ("eval batches", _kv(m.get("eval_batches"))),
      ("gate", _kv(gate, ("contract", "contract_version", "zone", "ratio", "floor_ratio",
                          "passed", "bypassed")) +
       ("; BYPASSED with --force_under_provisioned" if gate.get("bypassed") else "")),
      ("mesh at save", _kv(m.get("mesh"))), ("git commit", _v(m.get("git_commit"))),
      ("libraries", _kv(m.get("libraries")))]
  if "stamped" in m:
    rows.append(("stamped", _kv(m["stamped"], ("by", "time", "replaced_existing")) +
                 "; training provenance it could not know is <missing>"))
  return [f"{k:<13} {v}" for k, v in rows]


def quality_lines(q: dict[str, Any]) -> list[str]:
  out = [f"quality       {q['score']}/{q['max']}"]
  for name, r in q["subscores"].items():
    out.append(f"  {name:<21} {r['score']:>2}/{r['max']}")
    out += [f"    -{x['points']} {x['reason']}" for x in r["lost"]]
  return out


def report(path: str, step: str | None = None, as_json: bool = False,
           with_quality: bool = False) -> str:
  """What the CLI prints; raises PregateError for a damaged checkpoint or a missing step."""
  info = load(path, step)
  q = quality(info.meta, info.stored, info.step) if with_quality else None
  if as_json:
    if info.meta is None and q is None:
      raise arch_match.MissingMetadataError(f"{info.directory}/{info.step}")
    return json.dumps(info.meta if q is None else {"metadata": info.meta, "quality": q},
                      indent=2)
  return "\n".join(summary(info) + (quality_lines(q) if q else []))


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("pass one PATH: a run's workdir, its checkpoints dir or a step dir")
  from train.metrics_log import quiet_libraries
  quiet_libraries()
  try:
    print(report(argv[1], flags.FLAGS.step, flags.FLAGS.json, flags.FLAGS.quality))
  except PregateError as e:
    fail(e)


def run() -> None:
  """Entry point; the flags are defined here, so importing this module adds none."""
  flags.DEFINE_string("step", None, "latest | best | N (default latest; a step dir implies its "
                      "own).")
  flags.DEFINE_bool("json", False, "Print the raw metadata JSON (with --quality: {metadata, "
                    "quality}).")
  flags.DEFINE_bool("quality", False, "Add the 0-100 metadata quality score with reasons.")
  app.run(main)


if __name__ == "__main__":
  run()
