"""What a run's `data` section becomes on disk: one prepared dir, or a mixture's root dir whose
manifest names one prepared dir per source (inputs are prepared into ROOT/<name>; a source's
`data_dir` is used as it is). Every source shares one tokenizer: a prepared source's, or one
built over all input sources (a char vocabulary of all of them, a BPE trained on all their
training documents), and a prepared source whose tokenizer differs from the others is refused.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

from absl import logging

from core.errors import DataError
from train.data import mixture, prepare, staging, store
from train.data import spec as spec_lib
from train.data.tokenizer import Tokenizer, tokenizer_from_json

_COUNTS = [f"{s}_{k}" for s in store.SPLITS for k in ("tokens", "documents", "bytes")]


def ensure(data: Mapping[str, Any], data_dir: str, model_vocab: int | None = None) -> dict:
  """Prepare (or reuse) the data of a config's data section into `data_dir`; its manifest."""
  spec = spec_lib.from_config(data, model_vocab).check()
  workers = spec_lib.workers(data.get("workers", 0))
  srcs = spec_lib.sources(data, model_vocab)
  if not srcs:
    return prepare.ensure_prepared(spec_lib.resolve_corpus(data["corpus"]), data_dir, spec=spec,
                                   workers=workers)
  return ensure_mixture(srcs, data_dir, data.get("mixture_block", mixture.DEFAULT_BLOCK),
                        workers)


def _given(srcs: list[spec_lib.SourceSpec]) -> dict[str, dict[str, Any]]:
  """Manifests of the prepared-dir sources; refuses tokenizers that differ between them."""
  given = {s.name: store.load_manifest(s.data_dir) for s in srcs if s.data_dir}
  names = list(given)
  for name in names[1:]:
    if given[name]["tokenizer_fingerprint"] != given[names[0]]["tokenizer_fingerprint"]:
      raise DataError(f"source {name!r} was tokenized with a different tokenizer than source "
                      f"{names[0]!r}; prepare every source with the same tokenizer (e.g. the "
                      "same tokenizer_json)")
  return given


def _reusable(root: str, srcs: list[spec_lib.SourceSpec], fps: dict[str, prepare.Fingerprint],
              given: dict[str, dict[str, Any]], block: int) -> dict[str, Any] | None:
  try:
    m = store.load_manifest(root)
  except DataError:
    return None
  entries = m.get("sources") or {}
  if (not store.is_mixture(m) or m.get("mixture_block") != block
      or list(entries) != [s.name for s in srcs]
      or any(entries[s.name]["weight"] != s.weight for s in srcs)):
    return None
  fp = m["tokenizer_fingerprint"]
  for s in srcs:
    if s.data_dir:
      ok = (given[s.name]["train_sha256"] == entries[s.name]["train_sha256"]
            and given[s.name]["tokenizer_fingerprint"] == fp)
    else:
      ok = staging.reusable_manifest(
          store.join(root, s.name), source_sha256=fps[s.name].sha256,
          settings=s.spec.settings(prepare.tokenizer_json_sha(s.spec)),
          tokenizer_fingerprint=fp) is not None
    if not ok:
      return None
  return m


def _shared_tokenizer(srcs: list[spec_lib.SourceSpec], fps: dict[str, prepare.Fingerprint],
                      given: dict[str, dict[str, Any]]) -> Tokenizer:
  if given:
    return tokenizer_from_json(next(iter(given.values()))["tokenizer"])
  groups = [(fps[s.name], s.spec) for s in srcs]
  return prepare.scan(groups)[1]


def ensure_mixture(srcs: list[spec_lib.SourceSpec], root: str, block: int,
                   workers: int) -> dict[str, Any]:
  """Prepare (or reuse) every input source under ROOT/<name> with one shared tokenizer and
  write the mixture's root manifest; returns it."""
  mixture.block_counts([s.weight for s in srcs], block)  # refuses bad weights and block early
  given = _given(srcs)
  fps = {s.name: prepare.Fingerprint.of(spec_lib.resolve_corpus(s.corpus), s.spec.format)
         for s in srcs if s.corpus}
  existing = _reusable(root, srcs, fps, given, block)
  if existing is not None:
    return existing
  tok = _shared_tokenizer(srcs, fps, given)
  manifests = {}
  for s in srcs:
    if s.data_dir:
      manifests[s.name] = given[s.name]
      continue
    logging.info("data: preparing source %r into %s", s.name, store.join(root, s.name))
    manifests[s.name] = prepare.ensure_prepared(
        fps[s.name].spec, store.join(root, s.name), spec=s.spec, tokenizer=tok,
        workers=workers, name=s.name)
  manifest = mixture_manifest(srcs, manifests, tok, block)
  store.kvstore(root).write(store.MANIFEST, json.dumps(manifest, indent=2).encode()).result()
  return manifest


def mixture_manifest(srcs: list[spec_lib.SourceSpec], manifests: dict[str, dict[str, Any]],
                     tok: Tokenizer, block: int) -> dict[str, Any]:
  """The root manifest: the shared tokenizer, each source's dir, weight and counts, and totals
  (the fields every prepared manifest has, so runs and checkpoints read it the same way)."""
  entries = {}
  for s in srcs:
    m = manifests[s.name]
    entries[s.name] = {"dir": s.data_dir or s.name, "weight": s.weight,
                       "source_sha256": m["source_sha256"], "train_sha256": m["train_sha256"],
                       "val_sha256": m["val_sha256"], **{k: m.get(k, 0) for k in _COUNTS}}
  combined = lambda key: store.combined_sha256([(n, e["weight"], e[key])
                                                for n, e in entries.items()])
  first = manifests[srcs[0].name]
  return {
      "format_version": store.FORMAT_VERSION, "kind": "mixture", "mixture_block": block,
      "tokenizer": tok.to_json(), "tokenizer_fingerprint": tok.fingerprint(),
      "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
      "dtype": store.token_dtype(tok.vocab_size),
      "source_sha256": combined("source_sha256"), "train_sha256": combined("train_sha256"),
      "val_sha256": combined("val_sha256"), "val_fraction": first["val_fraction"],
      "val_split": first.get("val_split"),
      **{k: sum(e[k] for e in entries.values()) for k in _COUNTS},
      "sources": entries,
  }


def source_plan(manifest: Mapping[str, Any], *, steps: int, global_batch: int, seq_len: int,
                seed: int) -> dict[str, dict[str, float | int]]:
  """Per source: weight, planned tokens, unique train tokens, epochs (log and metadata)."""
  entries = manifest.get("sources") or {"corpus": {"weight": 1.0,
                                                   "train_tokens": manifest["train_tokens"]}}
  names = list(entries)
  return mixture.plan(names, [entries[n].get("weight", 1.0) for n in names],
                      [entries[n]["train_tokens"] for n in names], steps=steps,
                      global_batch=global_batch, seq_len=seq_len,
                      block=manifest.get("mixture_block", mixture.DEFAULT_BLOCK), seed=seed)


def plan_lines(plan: Mapping[str, Mapping[str, Any]]) -> list[str]:
  return [f"data source {name!r}: weight {p['weight']:.3f}, {p['planned_tokens']:,} planned "
          f"tokens over {p['unique_tokens']:,} unique = {p['epochs']:.2f} epochs"
          for name, p in plan.items()]
