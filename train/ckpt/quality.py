"""How far a checkpoint's metadata can be trusted (`pregate-inspect --quality`), and the
metadata as labelled lines. Pure: reads no file, traces only an abstract model.

The score is 0-100 in six sub-scores; loadability (the model rebuilds from the metadata
alone and the stored tensors agree) weighs most. Every lost point says what is missing or wrong:
  identity 10             schema 2; architecture family, hf_class, model_type 2 each, equal to
                          the Hugging Face identity of model.family; model.family and
                          model.qkv_bias recorded and consistent 2
  model_config 25         each other architecture field (arch_match.ARCH_FIELDS) present with
                          its type 2; execution-only fields (dtype, remat) 2; valid ModelConfig 1
  tokenizer 15            embedded 5, known type 3, rebuilds 3, size == model.vocab_size 4
  data_provenance 15      metadata.DATA_FIELDS, each with its points; tokenizer_fingerprint ==
                          the embedded tokenizer's 2
  training_provenance 15  metadata.TRAINING_FIELDS, each with its points; config.model ==
                          model 1
  signature 20            the model config's abstract param signature == orbax's stored one 12;
                          a `signature` key, when present, == stored 4; param_counts == stored 4
Beside the score, `fingerprint` says whether the checkpoint carries a functional fingerprint
and who verified it: the training run at save, or pregate-stamp on held-out text. Without one,
the non-shape fields (rope_theta, norm_eps, compute dtype, head split) are unverifiable.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from core.checks import is_int
from core.errors import ConfigError, PregateError
from gates import arch_match
from models.config import HF_IDENTITY, ModelConfig
from models.params import abstract_model, param_shapes
from train.ckpt import metadata
from train.data.tokenizer import KINDS, tokenizer_from_json

Signature = metadata.Signature
Check = tuple[int, bool, str]  # (points, passed, what is missing or wrong if not)
STAMP_HINT = "pregate-stamp {path} --config=<the config it was trained with>"
SUBSCORES = {"identity": 10, "model_config": 25, "tokenizer": 15, "data_provenance": 15,
             "training_provenance": 15, "signature": 20}
# Scored under identity, not model_config: they name the Hugging Face architecture.
IDENTITY_FIELDS = ("family", "qkv_bias")


def _d(x: Any) -> dict[str, Any]:
  return x if isinstance(x, dict) else {}


def _identity(meta: metadata.Metadata) -> list[Check]:
  """The Hugging Face identity: metadata written before model.family existed is a Llama."""
  arch, model = _d(meta.architecture), _d(meta.model)
  family = model.get("family", arch_match.ARCH_DEFAULTS["family"])
  want = metadata.architecture(family) if family in HF_IDENTITY else {}
  recorded = [k for k in IDENTITY_FIELDS if k not in model]
  consistent = family in HF_IDENTITY and model.get("qkv_bias") == (family == "qwen2")
  schema = meta.schema if meta.has("schema") else "<missing>"
  return [(2, meta.schema == metadata.SCHEMA,
           f"schema is {schema!r}, expected {metadata.SCHEMA!r}")] + [
      (2, k in want and arch.get(k) == want[k],
       f"architecture.{k} is {arch.get(k, '<missing>')!r}, expected {want.get(k, '<unknown>')!r}"
       f" for model.family={family!r}") for k in ("family", "hf_class", "model_type")] + [
      (2, not recorded and consistent,
       f"model.{' and model.'.join(recorded)} not recorded" if recorded else
       f"model.family={family!r} with model.qkv_bias={model.get('qkv_bias')!r} is not a "
       f"Hugging Face architecture (llama: no biases; qwen2: q/k/v biases)")]


def _model_config(meta: metadata.Metadata) -> list[Check]:
  """2 points per architecture field; execution-only fields (dtype, remat) share the rest."""
  model = _d(meta.model)
  valid = {"int": lambda x: is_int(x, 0),
           "float": lambda x: is_int(x, -math.inf) or isinstance(x, float),
           "bool": lambda x: isinstance(x, bool), "str": lambda x: isinstance(x, str),
           "bool | None": lambda x: x is None or isinstance(x, bool)}
  bad = {f.name: "missing" if f.name not in model else f"{model[f.name]!r}, not a {f.type}"
         for f in dataclasses.fields(ModelConfig)
         if not valid.get(f.type, lambda x: x is not None)(model.get(f.name))}
  shaping = [k for k in arch_match.ARCH_FIELDS if k not in IDENTITY_FIELDS]
  out = [(2, name not in bad, f"model.{name} is {bad.get(name)}") for name in shaping]
  execution = {k: v for k, v in bad.items()
               if k not in arch_match.ARCH_FIELDS and k not in IDENTITY_FIELDS}
  out.append((24 - 2 * len(shaping), not execution, "execution fields: " +
              ", ".join(f"model.{k} is {v}" for k, v in execution.items())))
  try:
    ModelConfig.from_dict(model)
  except (ConfigError, TypeError) as e:
    out.append((1, False, f"the model config is not a valid ModelConfig: {e}"))
  return out


def _tokenizer(meta: metadata.Metadata) -> tuple[list[Check], Any]:
  raw, tok, error = meta.tokenizer, None, "there is none"
  try:
    tok = tokenizer_from_json(raw)
  except PregateError as e:
    error = str(e) if raw is not None else error
  vocab = _d(meta.model).get("vocab_size")
  return [(5, isinstance(raw, dict), "no tokenizer embedded"),
          (3, _d(raw).get("type") in KINDS,
           f"tokenizer type is {_d(raw).get('type', '<missing>')!r}, not one of {KINDS}"),
          (3, tok is not None, f"the tokenizer does not rebuild ({error})"),
          (4, tok is not None and tok.vocab_size == vocab, f"tokenizer size "
           f"{tok.vocab_size if tok else '<unknown>'} is not model.vocab_size {vocab!r}")], tok


def _data(meta: metadata.Metadata, tok: Any) -> list[Check]:
  data = _d(meta.data)
  fp = data.get("tokenizer_fingerprint")
  out = [(points, valid(data.get(k)), f"data.{k} is {data.get(k, '<missing>')!r}")
         for k, (points, valid) in metadata.DATA_FIELDS.items()] if data else [
      (13, False, "no data fingerprint (manifest fields " + ", ".join(metadata.DATA_FIELDS) + ")")]
  return out + [(2, tok is not None and fp == tok.fingerprint(), "data.tokenizer_fingerprint "
                 + ("differs from the embedded tokenizer's" if tok and fp else
                    "cannot be checked (no usable tokenizer or fingerprint)"))]


def _training(m: metadata.Metadata, step: int | None) -> list[Check]:
  config = _d(m.config)
  checks = [(k, points, valid(m.get(k)) and (k != "step" or step in (None, m.step)))
            for k, (points, valid) in metadata.TRAINING_FIELDS.items()]
  return [(points, ok, f"{k} is {repr(m.get(k))[:60] if m.has(k) else 'missing'}" + (
      f" (checkpoint dir: step {step})" if k == "step" and step is not None else ""))
          for k, points, ok in checks] + [
      (1, bool(config) and config.get("model") == m.model,
       "config.model differs from model" if config else "no config.model to compare")]


def _signature(meta: metadata.Metadata, stored: Signature) -> list[Check]:
  try:
    diffs = arch_match.signature_differences(
        param_shapes(abstract_model(ModelConfig.from_dict(_d(meta.model)))), stored)
    out = [(12, not diffs, f"the model config's tensors differ from the stored ones "
            f"({len(diffs)}): " + "; ".join(diffs))]
  except (ConfigError, TypeError) as e:
    out = [(12, False, f"the model config does not build a model to compare ({e})")]
  if meta.has("signature"):
    try:
      diffs = arch_match.signature_differences(
          {p: (tuple(v[0]), str(v[1])) for p, v in meta.signature.items()}, stored)
      out.append((4, not diffs, "the metadata's signature differs from the stored one: "
                  + "; ".join(diffs)))
    except (AttributeError, TypeError, IndexError) as e:
      out.append((4, False, f"the metadata's signature is malformed ({e})"))
  total = sum(math.prod(shape) for shape, _ in stored.values())
  claimed = _d(meta.param_counts).get("total")
  return out + [(4, claimed == total, f"param_counts.total is {claimed!r} but the stored "
                 f"tensors hold {total:,} parameters")]


def quality(meta: metadata.Metadata | None, stored_signature: Signature,
            step: int | None = None) -> dict[str, Any]:
  """The 0-100 score of the module docstring. Pure: reads nothing, traces an abstract model."""
  if meta is None:
    no_meta = "no pregate metadata; stamp it: " + STAMP_HINT.format(path="PATH")
    checks = {name: [(w, False, no_meta)] for name, w in SUBSCORES.items()}
  else:
    tok_checks, tok = _tokenizer(meta)
    checks = {"identity": _identity(meta), "model_config": _model_config(meta),
              "tokenizer": tok_checks, "data_provenance": _data(meta, tok),
              "training_provenance": _training(meta, step),
              "signature": _signature(meta, stored_signature)}
  subs = {}
  for name, weight in SUBSCORES.items():
    lost = [{"points": p, "reason": why} for p, ok, why in checks[name] if not ok]
    subs[name] = {"score": weight - sum(x["points"] for x in lost), "max": weight, "lost": lost}
  return {"score": sum(s["score"] for s in subs.values()), "max": 100, "subscores": subs,
          "fingerprint": fingerprint_status(meta)}


def fingerprint_status(meta: metadata.Metadata | None) -> dict[str, Any]:
  """Whether a verified functional fingerprint is present, and what verified it."""
  fp = meta.fingerprint if meta is not None else None
  if fp is None:
    return {"present": False, "verified": False, "by": None,
            "detail": "none: the non-shape fields (rope_theta, norm_eps, compute dtype, head "
                      "split) cannot be verified against the tensors; fix: re-stamp it with "
                      "--heldout, or resume it once with its data present"}
  problems = arch_match.fingerprint_problems(fp)
  if problems:
    return {"present": True, "verified": False, "by": _d(fp).get("by"),
            "detail": f"malformed: {problems[0]}"}
  probe = f"{fp['probe']['batch']}x{fp['probe']['length']} probe, {fp['dtype']}"
  if fp.get("by") == "stamp":
    v = _d(fp.get("verified"))
    detail = (f"verified by pregate-stamp ({probe}): held-out loss {_v(v.get('loss'))} on "
              f"{v.get('heldout', '<missing>')}, random level {_v(v.get('random_loss'))}")
    return {"present": True, "verified": bool(v), "by": "stamp", "detail": detail}
  return {"present": True, "verified": fp.get("by") == "save", "by": fp.get("by"),
          "detail": f"recorded by the training run at save ({probe})"}


def _v(x: Any) -> str:
  """A value for people: thousands separators, hashes shortened, '<missing>' for null."""
  if x is None:
    return "<missing>"
  if is_int(x, -math.inf):
    return f"{x:,}"
  if metadata.is_sha256(x):
    return x[:12] + "..."
  return f"{x:.6g}" if isinstance(x, float) else str(x)


def _fields(m: metadata.Metadata, keys: tuple[str, ...]) -> str:
  return ", ".join(f"{k}={_v(m.get(k))}" for k in keys)


def _kv(d: Any, keys: tuple[str, ...] = ()) -> str:
  return ", ".join(f"{k}={_v(d.get(k))}" for k in keys or d) if _d(d) else "<missing>"


def summary(directory: str, step: int, steps: list[int], meta: metadata.Metadata | None,
            stored: Signature) -> list[str]:
  """The metadata as labelled lines; every null or absent field shows as '<missing>'."""
  n_stored = sum(math.prod(shape) for shape, _ in stored.values())
  rows = [("checkpoint", f"{directory}/{step} (steps on disk: {steps})"),
          ("stored", f"{len(stored)} tensors, {n_stored:,} parameters (orbax metadata)")]
  if meta is None:
    rows.append(("metadata", "NONE, so architecture, tokenizer and provenance are unknown and "
                 "it cannot be loaded; fix: " + STAMP_HINT.format(path=f"{directory}/{step}")))
  m = meta or metadata.Metadata()
  tok, gate = _d(m.tokenizer), _d(m.gate)
  vocab = len(tok["vocab"]) if isinstance(tok.get("vocab"), str) else (
      256 if tok.get("type") == "byte" else None)
  rows += [
      ("schema", _v(m.schema)), ("architecture", _kv(m.architecture)),
      ("model", _kv(m.model)), ("params", _kv(m.param_counts)),
      ("tokenizer", f"type={_v(tok.get('type'))}, vocab_size={_v(vocab)}"),
      ("data", _kv(m.data)), ("step", _fields(m, ("step", "termination"))),
      ("tokens", _fields(m, ("tokens_seen", "planned_tokens"))),
      ("val loss", _fields(m, ("val_loss", "best_val_loss"))),
      ("eval batches", _kv(m.eval_batches)),
      ("gate", _kv(gate, ("contract", "contract_version", "zone", "ratio", "floor_ratio",
                          "passed", "bypassed")) + ("; BYPASSED (--force_under_provisioned)"
                                                    if gate.get("bypassed") else "")),
      ("mesh at save", _kv(m.mesh)), ("git commit", _v(m.git_commit)),
      ("libraries", _kv(m.libraries))]
  rows.append(("fingerprint", fingerprint_status(m)["detail"] if meta is not None
                else "<missing>"))
  if isinstance(m.distill, dict):  # a distilled run: which teacher, at what weights
    d, t = m.distill, _d(m.distill.get("teacher"))
    rows.append(("distilled", f"from {_v(t.get('path'))} step {_v(t.get('step'))} "
                 f"(N = {_v(_d(t.get('param_counts')).get('total'))}), alpha="
                 f"{_v(d.get('alpha'))}, temperature={_v(d.get('temperature'))}"))
  if m.spikes_skipped or m.rollbacks:  # what the run's guards did (train/run/recovery.py)
    rows.append(("guard", f"{m.spikes_skipped or 0} loss spike(s) skipped in the step; "
                 + ("; ".join(f"rollback at step {_v(r.get('at_step'))} to step "
                              f"{_v(r.get('to_step'))}: {_v(r.get('verdict'))}, batches "
                              f"{_v(r.get('skipped_batches'))} skipped"
                              for r in m.rollbacks if isinstance(r, dict))
                    or "no rollback")))
  if m.has("packing") and isinstance(m.packing, dict):
    rows.append(("packing", _kv(m.packing)))
  if m.has("stamped"):
    rows.append(("stamped", _kv(m.stamped, ("by", "time", "replaced_existing")) +
                 "; training provenance it could not know is <missing>"))
  return [f"{k:<13} {v}" for k, v in rows]
