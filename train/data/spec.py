"""What to prepare, from a config's `data` section: the settings that decide the token arrays
(`DataSpec`), the named sources of a mixture (`SourceSpec`), and the cheap checks preflight runs
before anything is written or compiled (stat and small reads only).

  data.corpus = "a.jsonl.zst,dir/,shards/*.parquet"   # one source (named 'corpus')
  data.sources = {"web": {"corpus": "...", "weight": 0.7}, "code": {"data_dir": "...",
                  "weight": 0.3}}                        # a mixture; data.corpus is then unused
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping

from core.checks import is_int, is_number
from core.errors import DataError
from core.paths import resolve_path
from train.data import bpe, inputs
from train.data.tokenizer import KINDS

VAL_SPLITS = ("documents", "tail")
DEFAULT_EOT = "<|endoftext|>"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SOURCE_READ_FIELDS = ("format", "text_field", "txt_separator")


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Everything that decides a prepared dir's contents except the input bytes (the worker
  count does not: 1 and N workers write identical dirs)."""

  tokenizer: str = "char"
  val_fraction: float = 0.1
  val_split: str = "documents"
  eot_token: str = DEFAULT_EOT  # '' = no end-of-text token (char/byte only)
  tokenizer_json: str = ""  # bpe: an existing tokenizer.json, used as is
  bpe_vocab_size: int = 0  # bpe training: ids incl. special tokens
  special_tokens: str = ""  # bpe training: extra special tokens, comma-separated
  format: str = "auto"
  text_field: str = "text"
  txt_separator: str = ""

  def read_options(self) -> inputs.ReadOptions:
    return inputs.ReadOptions(self.format, self.text_field, self.txt_separator)

  @property
  def eot(self) -> str | None:
    return self.eot_token or None

  @property
  def trains_bpe(self) -> bool:
    return self.tokenizer == "bpe" and not self.tokenizer_json

  def check(self) -> DataSpec:
    """Refuse settings that cannot work, one line each (nothing is read)."""
    if self.tokenizer not in KINDS:
      raise DataError(f"unknown tokenizer kind {self.tokenizer!r}; use one of "
                      f"{', '.join(KINDS)}")
    if not is_number(self.val_fraction):
      raise DataError(f"val_fraction must be a number in (0, 1), got {self.val_fraction!r}; "
                      "use e.g. 0.1")
    if not 0.0 < self.val_fraction < 1.0:
      raise DataError(f"val_fraction={self.val_fraction} is outside (0, 1); use a fraction "
                      "such as 0.1")
    if self.val_split not in VAL_SPLITS:
      raise DataError(f"data.val_split={self.val_split!r} is not one of "
                      f"{', '.join(VAL_SPLITS)}")
    if self.tokenizer_json and self.tokenizer != "bpe":
      raise DataError(f"data.tokenizer_json is set but data.tokenizer={self.tokenizer!r}; set "
                      "data.tokenizer='bpe' to use a tokenizer.json")
    if self.tokenizer == "bpe" and not self.eot:
      raise DataError("a bpe tokenizer needs an end-of-text token; set data.eot_token (e.g. "
                      f"{DEFAULT_EOT!r})")
    if self.trains_bpe:
      specials = [self.eot_token, *bpe.parse_special_tokens(self.special_tokens)]
      if self.bpe_vocab_size == 0:
        raise DataError("bpe training needs a vocabulary size; set data.bpe_vocab_size "
                        "(--bpe_vocab_size), or model.vocab_size with bpe_vocab_size=0")
      bpe.check_vocab_size(self.bpe_vocab_size, specials)
    self.read_options().check()
    return self

  def settings(self, tokenizer_json_sha256: str | None = None) -> dict[str, Any]:
    """The manifest's record of these settings (what a reuse must match)."""
    out = dataclasses.asdict(self)
    out["val_fraction"] = float(self.val_fraction)
    out["tokenizer_json"] = tokenizer_json_sha256 if self.tokenizer_json else ""
    if not self.trains_bpe:  # read only when training a BPE: not part of other kinds' data
      out.update(bpe_vocab_size=0, special_tokens="")
    return out


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One named source: inputs to prepare (`corpus`) or an already prepared dir (`data_dir`)."""

  name: str
  weight: float
  corpus: str = ""
  data_dir: str = ""
  spec: DataSpec = DataSpec()


def _spec_fields(data: Mapping[str, Any], model_vocab: int | None) -> dict[str, Any]:
  fields = {f.name: data[f.name] for f in dataclasses.fields(DataSpec) if f.name in data}
  if fields.get("tokenizer_json"):
    fields["tokenizer_json"] = resolve_path(fields["tokenizer_json"])
  trains_bpe = fields.get("tokenizer") == "bpe" and not fields.get("tokenizer_json")
  if trains_bpe and fields.get("bpe_vocab_size", 0) == 0 and model_vocab is not None:
    fields["bpe_vocab_size"] = int(model_vocab)
  return fields


def from_config(data: Mapping[str, Any], model_vocab: int | None = None) -> DataSpec:
  """The DataSpec of a config's data section (bpe_vocab_size 0 = model.vocab_size)."""
  return DataSpec(**_spec_fields(data, model_vocab))


def sources(data: Mapping[str, Any], model_vocab: int | None = None) -> list[SourceSpec]:
  """The mixture's sources (empty list: a single-source run); refuses bad names and weights."""
  raw = data.get("sources") or {}
  if not raw:
    return []
  base = _spec_fields(data, model_vocab)
  out = []
  for name, entry in raw.items():
    entry = dict(entry or {})
    if not _NAME.match(str(name)):
      raise DataError(f"data.sources name {name!r} is not a plain name (letters, digits, "
                      "'_', '-', '.'); it names the source's directory")
    weight = entry.get("weight", 1.0)
    if not is_number(weight) or math.isnan(weight) or weight < 0:
      raise DataError(f"data.sources.{name}.weight={weight!r} must be a number >= 0; give each "
                      "source a non-negative weight")
    unknown = set(entry) - {"weight", "corpus", "data_dir", *_SOURCE_READ_FIELDS}
    if unknown:
      raise DataError(f"data.sources.{name} has unknown field(s) {sorted(unknown)}; use "
                      f"weight, corpus or data_dir, and {', '.join(_SOURCE_READ_FIELDS)}")
    corpus, data_dir = entry.get("corpus", ""), entry.get("data_dir", "")
    if bool(corpus) == bool(data_dir):
      raise DataError(f"data.sources.{name} needs exactly one of corpus (inputs to prepare) or "
                      "data_dir (a prepared dir)")
    fields = {**base, **{k: entry[k] for k in _SOURCE_READ_FIELDS if k in entry}}
    out.append(SourceSpec(str(name), float(weight), corpus, resolve_path(data_dir),
                          DataSpec(**fields)))
  total = sum(s.weight for s in out)
  if not total > 0 or not math.isfinite(total):
    raise DataError(f"data.sources weights sum to {total}; give at least one source a positive "
                    "weight")
  return out


def resolve_corpus(corpus: str) -> str:
  """Each comma-separated item of a config's corpus resolved against the repo root."""
  return ",".join(resolve_path(s.strip()) for s in str(corpus).split(",") if s.strip())


def _check_inputs(corpus: str, fmt: str) -> None:
  items = resolve_corpus(corpus)
  if not any(inputs.is_remote(s) for s in items.split(",")):
    inputs.resolve(items, fmt)


def _check_tokenizer(spec: DataSpec, model_vocab: int) -> None:
  if spec.tokenizer_json:
    tok = bpe.load(spec.tokenizer_json, spec.eot_token)
    size = tok.vocab_size
    what = f"tokenizer_json {spec.tokenizer_json} has {size:,} ids"
  elif spec.trains_bpe:
    size, what = spec.bpe_vocab_size, f"data.bpe_vocab_size={spec.bpe_vocab_size}"
  else:
    return
  if size > model_vocab:
    raise DataError(f"{what} but model.vocab_size={model_vocab}; set "
                    f"--config.model.vocab_size={size} (or more)")


def check(data: Mapping[str, Any], model_vocab: int) -> None:
  """Preflight: every cheap refusal of the data section (missing/empty inputs, globs that
  match nothing, bad weights, a tokenizer.json that does not parse or is larger than the
  model's vocabulary), before the workdir is created."""
  spec = from_config(data, model_vocab).check()
  _check_tokenizer(spec, model_vocab)
  srcs = sources(data, model_vocab)
  if not srcs:
    data_dir = data.get("data_dir", "")
    if data_dir and os.path.exists(os.path.join(resolve_path(data_dir), "manifest.json")):
      return
    _check_inputs(data["corpus"], spec.format)
    return
  for s in srcs:
    s.spec.check()
    if s.data_dir:
      if not inputs.is_remote(s.data_dir) and not os.path.isfile(
          os.path.join(s.data_dir, "manifest.json")):
        raise DataError(f"data.sources.{s.name}.data_dir={s.data_dir} is not a prepared data "
                        "dir (no manifest.json); run pregate-prepare into it or give corpus")
    else:
      _check_inputs(s.corpus, s.spec.format)


def workers(value: Any) -> int:
  """data.workers: processes that tokenize; 0 = one per CPU core available to this process."""
  if not is_int(value, 0):
    raise DataError(f"data.workers={value!r} must be an integer >= 0 (0 = one per core)")
  return int(value) or len(os.sched_getaffinity(0))
