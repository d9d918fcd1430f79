"""How many unique train tokens U a run's data holds, known before anything is prepared or compiled.

The Chinchilla gate judges effective tokens D', which need U per source. For a char or byte
tokenizer U is exact from the corpus alone: preparation (train.data.prepare.split_tokens) keeps
the first int(n * (1.0 - val_fraction)) of the n tokens for training, and n is the corpus's
character or UTF-8 byte count; the same expression is used here. Otherwise (e.g. a BPE tokenizer
not trained yet) U comes from an already prepared manifest, or is unknown until preparation,
when gates.chinchilla.recheck judges it. Reads files only; writes nothing.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping

from core.checks import is_int, is_number
from core.paths import REPO_ROOT


def _config_path(value: str) -> pathlib.Path:
  # Paths inside a config resolve against the repo root, as configs/base.py documents.
  path = pathlib.Path(value).expanduser()
  return path if path.is_absolute() else pathlib.Path(REPO_ROOT) / path


def _manifest_tokens(data_dir: pathlib.Path) -> tuple[dict[str, int] | None, str]:
  manifest = data_dir / "manifest.json"
  try:
    record = json.loads(manifest.read_text(encoding="utf-8"))
    value = record["train_tokens"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return None, f"cannot read train_tokens from {manifest} ({type(e).__name__}: {e})"
  if not is_int(value, 1):
    return None, f"{manifest}: train_tokens must be a positive integer, got {value!r}"
  name = pathlib.Path(str(record.get("source_path") or data_dir.name)).name
  return {name: value}, f"train_tokens from {manifest}"


def _corpus_tokens(data: Mapping[str, Any]) -> tuple[dict[str, int] | None, str]:
  corpus, tokenizer = data.get("corpus", ""), data.get("tokenizer", "")
  val_fraction = data.get("val_fraction", 0.0)
  if tokenizer not in ("char", "byte"):
    return None, f"tokenizer {tokenizer!r} is counted only after preparation (know 'char', 'byte')"
  if data.get("sources") or data.get("format", "auto") not in ("auto", "txt") \
      or not str(corpus).endswith(".txt") or data.get("val_split", "tail") != "tail" \
      and data.get("txt_separator"):
    # Mixtures, JSONL/Parquet, several files or documents split inside a file: the count
    # comes from the preparation (the gate re-checks right after it, before any compile).
    return None, "unique tokens are counted by the data preparation for this data spec"
  path = _config_path(corpus) if corpus and "://" not in corpus else None
  if path is None or not path.is_file():
    return None, f"no local corpus file at {corpus!r}"
  if not is_number(val_fraction) or not 0 < val_fraction < 1:
    return None, f"data.val_fraction must be in (0, 1), got {val_fraction!r}"
  raw = path.read_bytes()
  if tokenizer == "char":
    try:
      count, unit = len(raw.decode("utf-8")), "characters"
    except UnicodeDecodeError:
      return None, f"{path} is not UTF-8 (preparation will refuse it)"
  else:
    count, unit = len(raw), "utf-8 bytes"
  train = int(count * (1.0 - float(val_fraction)))  # train.data.prepare.split_tokens, exactly
  if train <= 0:
    return None, f"{path} leaves no training tokens at val_fraction={val_fraction}"
  return {path.name: train}, (f"counted: first {1 - val_fraction:.0%} of {path.name} in {unit}, "
                              f"tokenizer '{tokenizer}'")


def unique_train_tokens(data: Mapping[str, Any], data_dir: str | None = None
                        ) -> tuple[dict[str, int] | None, str]:
  """({source: U} or None, where it came from) for a config's data section.

  An explicit `data_dir` (a flag; resolved against the working directory) with a manifest wins.
  Else a char/byte corpus is counted directly (what preparation will produce, even if a stale
  manifest exists), else a manifest in config data.data_dir (against the repo root) is read."""
  if data_dir:
    directory = pathlib.Path(data_dir).expanduser().resolve()
    if (directory / "manifest.json").is_file():
      return _manifest_tokens(directory)
  counted, reason = _corpus_tokens(data)
  if counted is not None or not data.get("data_dir", ""):
    return counted, reason
  directory = _config_path(data.get("data_dir"))
  if (directory / "manifest.json").is_file():
    return _manifest_tokens(directory)
  return None, f"{reason}; no manifest in {directory}"


def for_gate(data: Mapping[str, Any]) -> dict[str, int] | None:
  """{source: U} for chinchilla.evaluate before preparation, or None (recheck after it)."""
  return unique_train_tokens(data)[0]
