"""The checkpoint metadata schema, written and read in this module only.

Every save writes one JSON record (the orbax item `meta`) that makes the checkpoint
self-describing: the architecture stamp and model config (from which the model is rebuilt),
the parameter signature, the embedded tokenizer, the data fingerprint, the gate verdict and
the training provenance, and the functional fingerprint. `pregate-stamp` writes the same record
for a checkpoint that lacks one, with what it cannot know set to null; `inspect --quality` scores
the fields listed here. Adding a field means editing this module: the record builders and the
field tables below.

`Metadata` is the record every other module receives: readers use its attributes, never string
keys (tests/test_metadata_record.py scans for them). `read` is the one reader of the file and
`write` the one writer (a save, an import and a stamp all call it), so the JSON layout is
produced and parsed here only. The nested sections keep their owners' JSON forms: `model` is
ModelConfig.to_dict(), `gate` the gate Verdict's, `fingerprint` train/ckpt/fingerprint.py's,
`data` the prepared data's manifest fields (DATA_FIELDS).

`fingerprint` (train/ckpt/fingerprint.py) binds the metadata to the tensors' behaviour, which
shape checks cannot: {version, probe: {seed, batch, length}, dtype (the compute dtype it was
measured under), mean_nll, target_logp and max_logp ([batch][length] float32 log-softmax
summaries of the model on the probe), by: "save" | "stamp", and for a stamp `verified`: the
held-out evaluation that proved the claimed architecture}. Every load path recomputes it under
`model` and refuses a mismatch (FingerprintMismatchError); a checkpoint saved before it existed
loads with a one-line warning.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import time
from typing import Any, Callable, Mapping

from core import provenance
from core.checks import is_int
from core.errors import CheckpointError
from core.jsonio import write_json_atomic
from gates import arch_match
from models.config import HF_IDENTITY, ModelConfig
from models.params import ParamCounts
from train.data.documents import PLAIN, Packing
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


@dataclasses.dataclass(frozen=True)
class Metadata:
  """One checkpoint's record, as typed attributes. Values are the JSON ones (a record written
  by an older or damaged pregate may hold anything: `inspect --quality` scores that, every
  load path proves `model`, `signature` and `fingerprint` against the tensors). `absent`: the
  fields the JSON does not hold (written back as absent, not null, so a record read and
  written again is the same JSON object); `extra`: keys this schema does not know, kept as
  they were."""
  model: Mapping[str, Any] | None = None
  schema: str | None = None
  architecture: Mapping[str, Any] | None = None
  param_counts: Mapping[str, Any] | None = None
  tokenizer: Mapping[str, Any] | None = None
  signature: Mapping[str, Any] | None = None
  config: Mapping[str, Any] | None = None
  libraries: Mapping[str, str] | None = None
  git_commit: str | None = None
  data: Mapping[str, Any] | None = None
  gate: Mapping[str, Any] | None = None
  planned_tokens: int | None = None
  eval_batches: Mapping[str, Any] | None = None
  mesh: Mapping[str, int] | None = None
  config_changes: list[str] | None = None
  data_sources: Mapping[str, Any] | None = None
  # How the run kept packed documents apart (train/data/documents.Packing, as resolved for its
  # data): a model trained with masking is evaluated with it. Absent: off.
  packing: Mapping[str, bool] | None = None
  distill: Mapping[str, Any] | None = None
  step: int | None = None
  tokens_seen: int | None = None
  val_loss: float | None = None
  best_val_loss: float | None = None
  evals_without_improvement: int | None = None
  nonfinite_skipped: int | None = None
  spikes_skipped: int | None = None  # updates the step's spike test skipped (train/state/spikes.py)
  # The run's rollbacks so far (train/run/recovery.py): where, why, the re-run's verdict and the
  # batch window skipped; a resume keeps those batches skipped.
  rollbacks: list[Mapping[str, Any]] | None = None
  termination: str | None = None
  fingerprint: Mapping[str, Any] | None = None
  stamped: Mapping[str, Any] | None = None
  imported_from: Mapping[str, Any] | None = None
  absent: frozenset[str] = frozenset()
  extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_json(cls, raw: Mapping[str, Any]) -> Metadata:
    """The record of a JSON object (`require` refuses one that describes no model)."""
    return cls(**{k: raw[k] for k in _FIELDS if k in raw},
               absent=frozenset(k for k in _FIELDS if k not in raw),
               extra={k: v for k, v in raw.items() if k not in _FIELDS})

  def to_json(self) -> dict[str, Any]:
    """The JSON object, in the field order the schema writes, absent fields left out."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name in _FIELDS and f.name not in self.absent}
    return {**out, **self.extra}

  def has(self, name: str) -> bool:
    """Whether the JSON holds the field (null counts), for the scorer's missing-vs-null."""
    return name in _FIELDS and name not in self.absent

  def get(self, name: str) -> Any:
    """A field named by one of this module's tables (DATA_FIELDS, TRAINING_FIELDS)."""
    return getattr(self, name) if name in _FIELDS else None

  @property
  def document_packing(self) -> Packing:
    """The run's packing (off when not recorded: imports, stamps, older records)."""
    return Packing.from_json(self.packing if isinstance(self.packing, Mapping) else None)

  @property
  def recorded_tokenizer_fingerprint(self) -> str | None:
    """The tokenizer fingerprint the prepared data recorded (None: no data record)."""
    fp = self.data.get("tokenizer_fingerprint") if isinstance(self.data, dict) else None
    return fp if isinstance(fp, str) else None


_FIELDS = frozenset(f.name for f in dataclasses.fields(Metadata)) - {"absent", "extra"}


def require(meta: Metadata | None, source: str) -> Metadata:
  """The metadata if it describes a model; MissingMetadataError (pointing to stamp) if not."""
  if meta is None or not meta.has("model"):
    raise arch_match.MissingMetadataError(source)
  return meta


def _path(directory: str, step: int) -> str:
  return os.path.join(directory, str(step), "meta", "metadata")


def read_json(directory: str, step: int) -> Any:
  """A step's raw JSON metadata (None if absent; CheckpointError if torn): what
  `pregate-inspect` shows and scores, whatever it holds."""
  path = _path(directory, step)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"checkpoint {directory}/{step}: unreadable metadata ({e})") from None


def previous(directory: str, step: int) -> Metadata | str | None:
  """The metadata a stamp is about to replace: its record, a description if unusable, None if
  absent."""
  try:
    with open(_path(directory, step)) as f:
      old = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    return f"unreadable ({e})"
  return parse(old) or "not a JSON object"


def parse(raw: Any) -> Metadata | None:
  """The record of raw JSON; None when it is not a JSON object."""
  return Metadata.from_json(raw) if isinstance(raw, dict) else None


def read(directory: str, step: int) -> Metadata | None:
  """A step's metadata record, read from its file (no arrays, no orbax manager)."""
  return parse(read_json(directory, step))


def encode(meta: Metadata) -> dict[str, Any]:
  """The JSON every writer stores (the save, an import, a stamp): the one write path."""
  return meta.to_json()


def write_file(directory: str, step: int, meta: Metadata) -> str | None:
  """Replace a committed step's metadata file in one rename, backing up an existing file
  (`pregate-stamp`); -> the backup path."""
  target = _path(directory, step)
  backup = None
  try:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.exists(target):
      backup = f"{target}.bak-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%S.%fZ}"
      shutil.copy2(target, backup)
    write_json_atomic(target, encode(meta))
  except OSError as e:
    raise CheckpointError(f"cannot write {target}: {e}") from e
  return backup


def carried(meta: Metadata, names: tuple[str, ...]) -> dict[str, Any]:
  """The named fields the JSON holds (null included), as JSON: what an export carries."""
  return {k: v for k, v in meta.to_json().items() if k in names}


def signature_to_json(sig: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, list]:
  return {p: [list(s), d] for p, (s, d) in sorted(sig.items())}


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
               distill: Mapping[str, Any] | None = None,
               packing: Packing = PLAIN) -> Metadata:
  """The part of a training run's record that is the same for every save. `sources`: per data
  source, its weight, planned tokens, unique train tokens and epochs (`data_sources`).
  `distill`: a distilled run's teacher {spec, path, step, architecture, model, param_counts,
  fingerprint_sha256, tokenizer_fingerprint} with its alpha and temperature; null otherwise
  (train/run/teacher.py writes and compares it)."""
  changes = changes or {}
  return Metadata.from_json(dict(
      _model_record(config, model_cfg, counts, tokenizer, signature),
      data=data_fingerprint(manifest), gate=gate, planned_tokens=gate["tokens"],
      eval_batches=eval_batches, mesh=mesh,
      config_changes=changes.get("schedule", []) + changes.get("safe", []),
      data_sources={k: dict(v) for k, v in (sources or {}).items()},
      packing=packing.to_json(), distill=None if distill is None else dict(distill)))


def save_record(run: Metadata, *, step: int, tokens_seen: int,
                val_loss: float | None, best_val_loss: float | None,
                evals_without_improvement: int, nonfinite_skipped: int,
                termination: str | None, fingerprint: dict[str, Any], spikes_skipped: int = 0,
                rollbacks: list[Mapping[str, Any]] | None = None) -> Metadata:
  """One save's record: the run's record plus where the run stands at `step` and what its
  parameters compute (the fingerprint, measured by the run that trained them)."""
  return Metadata.from_json(dict(
      run.to_json(), step=step, tokens_seen=tokens_seen, val_loss=val_loss,
      best_val_loss=best_val_loss, evals_without_improvement=evals_without_improvement,
      nonfinite_skipped=nonfinite_skipped, spikes_skipped=spikes_skipped,
      rollbacks=[dict(r) for r in rollbacks or []],
      termination=termination, fingerprint=dict(fingerprint, by="save")))


def import_record(*, model_cfg: ModelConfig, counts: ParamCounts, tokenizer: dict[str, Any],
                  signature: Signature, step: int, provenance: Mapping[str, Any],
                  fingerprint: dict[str, Any]) -> Metadata:
  """The record of a checkpoint converted from a Hugging Face directory: the identity, model,
  tensors, tokenizer and fingerprint are the converter's; the training provenance is what the
  directory carried (a pregate export's record) or null."""
  unknown = ("tokens_seen", "val_loss", "gate", "data", "eval_batches", "config",
             "libraries", "git_commit")
  raw = {**{k: None for k in unknown}, **provenance, "schema": SCHEMA,
         "architecture": architecture(model_cfg.family), "model": model_cfg.to_dict(),
         "param_counts": counts.to_dict(), "tokenizer": tokenizer, "step": step,
         "signature": signature_to_json(signature)}
  return Metadata.from_json(dict(raw, fingerprint=dict(fingerprint, by="import")))


def stamp_record(*, config: dict[str, Any], model_cfg: ModelConfig, counts: ParamCounts,
                 tokenizer: dict[str, Any], signature: Signature, step: int, planned_tokens: int,
                 replaced: bool, tokenizer_from: dict[str, Any], fingerprint: dict[str, Any],
                 verified: dict[str, Any]) -> Metadata:
  """The record `pregate-stamp` writes: unknowable provenance null and listed in `stamped`;
  the fingerprint carries the held-out evaluation that proved the claimed architecture."""
  return Metadata.from_json(dict(
      _model_record(config, model_cfg, counts, tokenizer, signature),
      planned_tokens=planned_tokens, step=step, **{k: None for k in STAMP_UNKNOWN},
      fingerprint=dict(fingerprint, by="stamp", verified=verified),
      stamped={"by": "pregate-stamp",
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "replaced_existing": replaced, "tokenizer_from": tokenizer_from,
               "unknown": list(STAMP_UNKNOWN)}))
