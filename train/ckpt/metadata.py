"""The checkpoint metadata schema, written and read in this module only.

Every save writes one JSON record (the orbax item `meta`) that makes the checkpoint
self-describing: the architecture stamp and model config (from which the model is rebuilt),
the parameter signature, the embedded tokenizer, the data fingerprint, the gate verdict and
the training provenance, and the functional fingerprint. `pregate-stamp` writes the same record
for a checkpoint that lacks one, with what it cannot know set to null; `inspect --quality` scores
the fields listed here. Adding a field means editing this module: the record builders and the
field tables below.

`fingerprint` (train/ckpt/fingerprint.py) binds the metadata to the tensors' behaviour, which
shape checks cannot: {version, probe: {seed, batch, length}, dtype (the compute dtype it was
measured under), mean_nll, target_logp and max_logp ([batch][length] float32 log-softmax
summaries of the model on the probe), by: "save" | "stamp", and for a stamp `verified`: the
held-out evaluation that proved the claimed architecture}. Every load path recomputes it under
`model` and refuses a mismatch (FingerprintMismatchError); a checkpoint saved before it existed
loads with a one-line warning.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from core import provenance
from core.checks import is_int
from gates import arch_match
from models.config import HF_IDENTITY, ModelConfig
from models.params import ParamCounts
from train.state.sharding import AXES

SCHEMA = "pregate.checkpoint/v1"
Signature = dict[str, tuple[tuple[int, ...], str]]


def architecture(family: str) -> dict[str, str]:
  """The `architecture` identity of a model family (ModelConfig.family): which Hugging Face
  class and model_type its tensors are laid out as."""
  hf_class, model_type = HF_IDENTITY[family]
  return {"family": family, "hf_class": hf_class, "model_type": model_type}


def is_sha256(x: Any) -> bool:
  return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def _count(x: Any) -> bool:
  return is_int(x, 0)


# The data fingerprint (copied from the prepared data's manifest): field -> (quality points,
# validator).
DATA_FIELDS: dict[str, tuple[int, Callable[[Any], bool]]] = {
    "source_sha256": (3, is_sha256), "train_sha256": (2, is_sha256),
    "val_sha256": (2, is_sha256), "tokenizer_fingerprint": (2, is_sha256),
    "train_tokens": (1, _count), "val_tokens": (1, _count), "format_version": (1, _count),
    "val_fraction": (1, lambda x: isinstance(x, float) and 0 < x < 1)}

# Training provenance: field -> (quality points, validator). A checkpoint salvaged by
# `pregate-stamp` cannot know those in STAMP_UNKNOWN and records them as null.
TRAINING_FIELDS: dict[str, tuple[int, Callable[[Any], bool]]] = {
    "step": (2, _count), "tokens_seen": (2, _count),
    "planned_tokens": (2, lambda x: is_int(x, 1)),
    "gate": (2, lambda x: isinstance(x, dict) and all(k in x for k in
                                                      ("zone", "passed", "bypassed"))),
    "git_commit": (2, lambda x: isinstance(x, str) and bool(x)),
    "libraries": (2, lambda x: isinstance(x, dict) and bool(x)),
    "mesh": (1, lambda x: isinstance(x, dict) and all(is_int(x.get(a), 1) for a in AXES)),
    "config": (1, lambda x: isinstance(x, dict) and bool(x))}

# Unknowable after the fact (tensors + config cannot recover them). The resume counters
# (evals_without_improvement, nonfinite_skipped) are left out: a resume reads them as counts.
STAMP_UNKNOWN = ("data", "gate", "eval_batches", "mesh", "tokens_seen", "val_loss",
                 "best_val_loss", "termination")


def require(meta: Any, source: str) -> dict[str, Any]:
  """The metadata if it describes a model; MissingMetadataError (pointing to stamp) if not."""
  if not isinstance(meta, dict) or "model" not in meta:
    raise arch_match.MissingMetadataError(source)
  return meta


def signature_to_json(sig: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, list]:
  return {p: [list(s), d] for p, (s, d) in sorted(sig.items())}


def signature_from_json(raw: Mapping[str, Any]) -> Signature:
  return {p: (tuple(v[0]), str(v[1])) for p, v in raw.items()}


def data_fingerprint(manifest: Mapping[str, Any]) -> dict[str, Any]:
  return {k: manifest.get(k) for k in DATA_FIELDS}


def _model_record(config: dict[str, Any], model_cfg: ModelConfig, counts: ParamCounts,
                  tokenizer: dict[str, Any], signature: Signature) -> dict[str, Any]:
  """What every record carries, whoever writes it: identity, model, tensors, tokenizer."""
  return dict(schema=SCHEMA, architecture=architecture(model_cfg.family),
              model=model_cfg.to_dict(),
              param_counts=counts.to_dict(), tokenizer=tokenizer,
              signature=signature_to_json(signature), config=config,
              libraries=provenance.library_versions(), git_commit=provenance.git_commit())


def run_record(*, config: dict[str, Any], model_cfg: ModelConfig, counts: ParamCounts,
               tokenizer: dict[str, Any], signature: Signature, manifest: Mapping[str, Any],
               gate: dict[str, Any], eval_batches: dict[str, Any], mesh: dict[str, int],
               changes: Mapping[str, list[str]] | None = None,
               sources: Mapping[str, Mapping[str, Any]] | None = None,
               distill: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """The part of a training run's record that is the same for every save. `sources`: per data
  source, its weight, planned tokens, unique train tokens and epochs (`data_sources`).
  `distill`: a distilled run's teacher {spec, path, step, architecture, model, param_counts,
  fingerprint_sha256, tokenizer_fingerprint} with its alpha and temperature; null otherwise
  (train/run/teacher.py writes and compares it)."""
  changes = changes or {}
  return dict(_model_record(config, model_cfg, counts, tokenizer, signature),
              data=data_fingerprint(manifest), gate=gate, planned_tokens=gate["tokens"],
              eval_batches=eval_batches, mesh=mesh,
              config_changes=changes.get("schedule", []) + changes.get("safe", []),
              data_sources={k: dict(v) for k, v in (sources or {}).items()},
              distill=None if distill is None else dict(distill))


def save_record(run: Mapping[str, Any], *, step: int, tokens_seen: int,
                val_loss: float | None, best_val_loss: float | None,
                evals_without_improvement: int, nonfinite_skipped: int,
                termination: str | None, fingerprint: dict[str, Any]) -> dict[str, Any]:
  """One save's record: the run's record plus where the run stands at `step` and what its
  parameters compute (the fingerprint, measured by the run that trained them)."""
  return dict(run, step=step, tokens_seen=tokens_seen, val_loss=val_loss,
              best_val_loss=best_val_loss, evals_without_improvement=evals_without_improvement,
              nonfinite_skipped=nonfinite_skipped, termination=termination,
              fingerprint=dict(fingerprint, by="save"))


def import_record(*, model_cfg: ModelConfig, counts: ParamCounts, tokenizer: dict[str, Any],
                  signature: Signature, step: int, provenance: Mapping[str, Any]
                  ) -> dict[str, Any]:
  """The record of a checkpoint converted from a Hugging Face directory: the identity, model,
  tensors and tokenizer are the converter's; the training provenance is what the directory
  carried (a pregate export's record) or null."""
  unknown = ("tokens_seen", "val_loss", "gate", "data", "eval_batches", "config",
             "libraries", "git_commit")
  return {**{k: None for k in unknown}, **provenance, "schema": SCHEMA,
          "architecture": architecture(model_cfg.family), "model": model_cfg.to_dict(),
          "param_counts": counts.to_dict(), "tokenizer": tokenizer, "step": step,
          "signature": signature_to_json(signature)}


def stamp_record(*, config: dict[str, Any], model_cfg: ModelConfig, counts: ParamCounts,
                 tokenizer: dict[str, Any], signature: Signature, step: int, planned_tokens: int,
                 replaced: bool, tokenizer_from: dict[str, Any], fingerprint: dict[str, Any],
                 verified: dict[str, Any]) -> dict[str, Any]:
  """The record `pregate-stamp` writes: unknowable provenance null and listed in `stamped`;
  the fingerprint carries the held-out evaluation that proved the claimed architecture."""
  return dict(_model_record(config, model_cfg, counts, tokenizer, signature),
              planned_tokens=planned_tokens, step=step, **{k: None for k in STAMP_UNKNOWN},
              fingerprint=dict(fingerprint, by="stamp", verified=verified),
              stamped={"by": "train.stamp",
                       "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "replaced_existing": replaced, "tokenizer_from": tokenizer_from,
                       "unknown": list(STAMP_UNKNOWN)})
