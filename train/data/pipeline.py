"""Reading prepared token arrays and turning them into batches for training and evaluation.

Batch i is a pure function of (seed, i): its windows start at offsets drawn from
`np.random.default_rng([seed, i])`. So the pipeline keeps no state beyond "next batch index",
resumes exactly, and every process of a multi-host run draws the same global batch and keeps
its own rows. Each batch is one batched tensorstore read (per source), not one read per window.
A mixture (`MixtureTokens`) first assigns each sequence of the batch a source, statelessly
(`train.data.mixture`), then draws each window inside its source.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterator

import grain
import numpy as np

from core.checks import is_int
from core.errors import ConfigError, DataError
from train.data import documents
from train.data.documents import PLAIN, Packing
from train.data.tokens import (
  DEFAULT_CACHE_BYTES,
  MixtureTokens,
  TokenArray,
  TokenSet,
  open_mixture,
  open_split,
  open_tokens,
)

Batch = dict[str, np.ndarray]

__all__ = ["DEFAULT_CACHE_BYTES", "MixtureTokens", "TokenArray", "TokenSet", "open_mixture",
           "open_split", "open_tokens", "Packing", "BatchSource", "ResumableIterator",
           "make_train_iter", "eval_batches", "bits_per_byte", "reproduce_eval_batches",
           "measure_throughput"]
# Measured on the 2-core CI machine: one background thread keeping two batches ready hid the
# read behind a jitted step (+0.05-0.13 ms/step vs +0.17-0.31 with no thread, +0.4-0.6 with
# grain's default 16); more threads only contend for the two cores.
DEFAULT_NUM_THREADS = 1
DEFAULT_PREFETCH = 2
# A third, non-zero seed word: numpy pads short entropy with zeros, so [seed, i] and
# [seed, i, 0] are the same stream, and eval must never reuse a training window draw.
_EVAL_STREAM = 0xE7A1


class BatchSource:
  """grain random-access source whose item i is a whole batch (this process's rows).

  One item per batch (not per window) lets each batch be one vectorised read, measured at ~10x
  a per-example grain pipeline (docs/stack-facts.md).
  """

  def __init__(self, tokens: TokenSet, *, global_batch: int, seq_len: int, seed: int,
               num_batches: int, process_index: int = 0, process_count: int = 1,
               stream: tuple[int, ...] = (), packing: Packing = PLAIN):
    for name, value in (("global_batch", global_batch), ("seq_len", seq_len),
                        ("num_batches", num_batches), ("process_count", process_count)):
      if not is_int(value, 1):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not is_int(seed, 0):
      raise ConfigError(f"data seed must be a non-negative integer, got {seed!r}; set "
                        "--config.seed to e.g. 0")
    if not 0 <= process_index < process_count:
      raise ConfigError(f"process_index={process_index} is outside [0, {process_count})")
    if global_batch % process_count:
      raise ConfigError(f"global_batch={global_batch} is not divisible by process_count="
                        f"{process_count}; set --config.batch.global_batch to a multiple of it")
    tokens.require(seq_len + 1, f"seq_len={seq_len} (a window of seq_len+1)")
    self.tokens = tokens
    self.global_batch, self.seq_len, self.seed = int(global_batch), int(seq_len), int(seed)
    self.num_batches = int(num_batches)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.stream = tuple(int(s) for s in stream)
    self.packing = packing
    rows = self.global_batch // self.process_count
    self._rows = slice(self.process_index * rows, (self.process_index + 1) * rows)

  def __len__(self) -> int:
    return self.num_batches

  def __repr__(self) -> str:
    # grain's DataLoader compares reprs to check a checkpoint belongs to this source.
    return (f"BatchSource(tokens={len(self.tokens)}, global_batch={self.global_batch}, "
            f"seq_len={self.seq_len}, seed={self.seed}, stream={self.stream}, "
            f"process={self.process_index}/{self.process_count}"
            f"{', packing=' + str(self.packing.to_json()) if self.packing.mask else ''})")

  def global_starts(self, index: int) -> np.ndarray:
    """Start offsets of all global_batch windows of batch `index` (one token array only)."""
    return self.tokens.global_starts(self.seed, index, self.stream, self.global_batch,
                                     self.seq_len + 1)

  def __getitem__(self, index: int) -> Batch:
    index = int(index)
    if not 0 <= index < self.num_batches:
      raise IndexError(f"batch {index} out of range [0, {self.num_batches})")
    windows, starts = self.tokens.batch_windows(self.seed, index, self.stream,
                                                self.global_batch, self._rows, self.seq_len + 1,
                                                starts=self.packing.mask)
    batch = {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
    if starts is not None:  # the inputs' segments: a target belongs to its input's document
      batch.update(documents.segments(starts[:, :-1], self.packing))
    return batch

  def describe(self) -> dict[str, Any]:
    """What decides the batch contents (not num_batches or the process split): resume key."""
    out = {"seed": self.seed, "global_batch": self.global_batch, "seq_len": self.seq_len,
           **self.tokens.describe(), "stream": list(self.stream)}
    return {**out, "packing": self.packing.to_json()} if self.packing.mask else out


class ResumableIterator(grain.DatasetIterator):
  """grain iterator whose state also names the pipeline, so resuming into a different one fails,
  and that never yields the batches of its skipped windows.

  grain's own state is only {'next_index': n}; restoring it under another seed, batch shape or
  dataset would silently train on different data. `skips` are inclusive batch-index windows
  (data.skip_batches, and those a rollback adds: train/run/recovery.py); they are part of the
  state, so a resume keeps them skipped.
  """

  def __init__(self, parent: grain.DatasetIterator, pipeline: dict[str, Any],
               skips: list[tuple[int, int]] | None = None):
    super().__init__(parent)
    self.pipeline = pipeline
    self.skips = sorted(skips or [])
    self.index = 0  # the batch index the next call yields (before skipping)
    self.last_index = -1  # the batch index of the batch yielded last

  def skip(self, first: int, last: int) -> None:
    """Never yield batches first..last (a rollback's window)."""
    self.skips = sorted({*self.skips, (int(first), int(last))})

  def __next__(self) -> Batch:
    jump = self.index
    for first, last in self.skips:
      if first <= jump <= last:
        jump = last + 1
    if jump != self.index:
      self._parent.set_state({"next_index": jump})
    batch = next(self._parent)
    self.last_index, self.index = jump, jump + 1
    return batch

  def get_state(self) -> dict[str, Any]:
    state = {**self._parent.get_state(), "pipeline": self.pipeline}
    return {**state, "skips": [list(w) for w in self.skips]} if self.skips else state

  def set_state(self, state: dict[str, Any]) -> None:
    saved = state.get("pipeline", self.pipeline)
    if saved != self.pipeline:
      diff = {k: (saved.get(k), self.pipeline.get(k)) for k in self.pipeline
              if saved.get(k) != self.pipeline.get(k)}
      raise DataError(f"data iterator state belongs to another pipeline (saved vs now: {diff}); "
                      "resume with the original seed, batch shape and data, or start fresh")
    self._parent.set_state({k: v for k, v in state.items() if k not in ("pipeline", "skips")})
    self.skips = sorted({*self.skips, *(tuple(w) for w in state.get("skips", []))})
    self.index = int(state["next_index"])


def make_train_iter(token_array: TokenSet, *, global_batch: int, seq_len: int, seed: int,
                    num_batches: int, process_index: int = 0, process_count: int = 1,
                    prefetch: int = DEFAULT_PREFETCH, num_threads: int = DEFAULT_NUM_THREADS,
                    packing: Packing = PLAIN, skips: list[tuple[int, int]] | None = None
                    ) -> ResumableIterator:
  """Training batches 0..num_batches-1 with background prefetch and exact get/set_state.

  Works with orbax via grain.checkpoint.CheckpointSave(it) / CheckpointRestore(it).
  """
  source = BatchSource(token_array, global_batch=global_batch, seq_len=seq_len, seed=seed,
                       num_batches=num_batches, process_index=process_index,
                       process_count=process_count, packing=packing)
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  parent = iter(grain.MapDataset.source(source).to_iter_dataset(options))
  it = ResumableIterator(parent, source.describe(), skips)
  it.start_prefetch()  # the first batches load while the train step compiles
  return it


def eval_batches(token_array: TokenSet, *, batch_size: int, seq_len: int, n_batches: int,
                 seed: int = 0, process_index: int = 0, process_count: int = 1,
                 token_bytes: np.ndarray | None = None, packing: Packing = PLAIN
                 ) -> tuple[list[Batch], dict[str, Any]]:
  """A fixed set of validation batches and the description that reproduces them exactly.

  Drawn from a seed stream disjoint from training's, so the same seed never yields train
  windows; the description is small enough to store in a checkpoint. With `token_bytes` (the
  tokenizer's bytes per id) it also records `target_bytes`, the UTF-8 bytes of every target
  of the global batches, from which `bits_per_byte` turns a mean loss into val_bpb. A masked
  run's batches carry its segments and the description its `packing`, so every later
  evaluation of them masks as the run did.
  """
  kw = dict(global_batch=batch_size, seq_len=seq_len, seed=seed, num_batches=n_batches,
            stream=(_EVAL_STREAM,), packing=packing)
  source = BatchSource(token_array, process_index=process_index, process_count=process_count,
                       **kw)
  description = {"seed": int(seed), "n_batches": int(n_batches), "batch_size": int(batch_size),
                 "seq_len": int(seq_len), "split": token_array.split,
                 "tokens": len(token_array), "sha256": token_array.sha256,
                 "stream": _EVAL_STREAM}
  if packing.mask:
    description["packing"] = packing.to_json()
  batches = [source[i] for i in range(n_batches)]
  if token_bytes is not None:
    whole = batches if process_count == 1 else [BatchSource(token_array, **kw)[i]
                                                 for i in range(n_batches)]
    description["target_bytes"] = int(sum(token_bytes[b["targets"]].sum() for b in whole))
  return batches, description


def bits_per_byte(mean_loss: float | None, description: dict[str, Any]) -> float | None:
  """val_bpb: nats summed over the eval targets / (their UTF-8 bytes x ln 2). The batches are
  equal-size, so the summed nats are mean_loss x targets. None without `target_bytes`."""
  n_bytes = description.get("target_bytes")
  if mean_loss is None or not n_bytes:
    return None
  targets = description["n_batches"] * description["batch_size"] * description["seq_len"]
  return mean_loss * targets / (n_bytes * math.log(2))


def reproduce_eval_batches(token_array: TokenSet, description: dict[str, Any], *,
                           process_index: int = 0, process_count: int = 1) -> list[Batch]:
  """The batches an `eval_batches` description names; refuses if the data changed."""
  if description.get("stream") != _EVAL_STREAM:
    raise DataError(f"eval description stream {description.get('stream')!r} is not this "
                    f"code's {_EVAL_STREAM}; re-run evaluation with fresh eval batches")
  if description.get("sha256") != token_array.sha256:
    raise DataError(f"eval batches were drawn from data with sha256 "
                    f"{str(description.get('sha256'))[:16]} but {token_array.path} has "
                    f"{token_array.sha256[:16]}; evaluate on the original prepared data")
  batches, _ = eval_batches(token_array, batch_size=description["batch_size"],
                            seq_len=description["seq_len"], n_batches=description["n_batches"],
                            seed=description["seed"], process_index=process_index,
                            process_count=process_count,
                            packing=Packing.from_json(description.get("packing")))
  return batches


def measure_throughput(iterator: Iterator[Batch], n_batches: int, warmup: int = 1) -> float:
  """Input tokens per second the pipeline delivers (consumes warmup + n_batches batches)."""
  for _ in range(warmup):
    next(iterator)
  tokens = 0
  t0 = time.perf_counter()
  for _ in range(n_batches):
    tokens += next(iterator)["inputs"].size
  return tokens / max(time.perf_counter() - t0, 1e-9)
