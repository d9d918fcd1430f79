"""Reading prepared token arrays and turning them into batches for training and evaluation.

Batch i is a pure function of (seed, i): its windows start at offsets drawn from
`np.random.default_rng([seed, i])`. So the pipeline keeps no state beyond "next batch index",
resumes exactly, and every process of a multi-host run draws the same global batch and keeps
its own rows. Each batch is one batched tensorstore read, not one read per window.
"""
from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Iterator

import grain
import numpy as np
import tensorstore as ts

from core.checks import first_line, is_int
from core.errors import ConfigError, DataError
from train.data import store

Batch = dict[str, np.ndarray]

DEFAULT_CACHE_BYTES = 256 << 20
# Measured on the 2-core CI machine: one background thread keeping two batches ready hid the
# read behind a jitted step (+0.05-0.13 ms/step vs +0.17-0.31 with no thread, +0.4-0.6 with
# grain's default 16); more threads only contend for the two cores.
DEFAULT_NUM_THREADS = 1
DEFAULT_PREFETCH = 2
# A third, non-zero seed word: numpy pads short entropy with zeros, so [seed, i] and
# [seed, i, 0] are the same stream, and eval must never reuse a training window draw.
_EVAL_STREAM = 0xE7A1


class TokenArray:
  """A prepared 1-D token array, read through tensorstore with a chunk cache."""

  def __init__(self, store: ts.TensorStore, path: str, split: str, sha256: str | None):
    self._store = store
    self.path = path
    self.split = split
    self._sha256 = sha256

  def __len__(self) -> int:
    return int(self._store.shape[0])

  def __repr__(self) -> str:
    return f"TokenArray({self.path!r}, tokens={len(self)}, dtype={self._store.dtype.name})"

  @property
  def known_sha256(self) -> str | None:
    """The manifest's hash if there is one; never reads the data."""
    return self._sha256

  @property
  def sha256(self) -> str:
    """The manifest's hash of the stored tokens, or (no manifest) one computed here, once."""
    if self._sha256 is None:
      h = hashlib.sha256()
      step = store.CHUNK_TOKENS * 16
      for start in range(0, len(self), step):
        chunk = self._store[start:min(start + step, len(self))].read().result()
        h.update(chunk.astype(chunk.dtype.newbyteorder("<")).tobytes())
      self._sha256 = h.hexdigest()
    return self._sha256

  def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Tokens [start, stop) as int32 (one contiguous read)."""
    stop = len(self) if stop is None else stop
    return self._store[start:stop].read().result().astype(np.int32)

  def read_windows(self, starts: np.ndarray, length: int) -> np.ndarray:
    """int32 [len(starts), length]: windows tokens[s:s+length], in ONE batched read."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if starts.size and (starts.min() < 0 or starts.max() + length > len(self)):
      raise IndexError(f"window starts must lie in [0, {len(self) - length}] for length {length}")
    index = starts[:, None] + np.arange(length, dtype=np.int64)
    return self._store.vindex[index].read().result().astype(np.int32)

  def require(self, n_tokens: int, why: str) -> None:
    """Refuse early, naming the split, when it is too short for one window."""
    if len(self) < n_tokens:
      other = {"val": "; or raise val_fraction", "train": "; or lower val_fraction"}
      raise DataError(f"the {self.split} split ({self.path}) has {len(self):,} tokens but {why} "
                      f"needs at least {n_tokens:,}; lower --config.batch.seq_len, use a larger "
                      f"corpus{other.get(self.split, '')}")


def open_tokens(path: str, *, cache_bytes: int = DEFAULT_CACHE_BYTES) -> TokenArray:
  """Open a prepared zarr3 token array; its manifest (if beside it) supplies hash and split."""
  path = str(path)
  spec = store.zarr3_spec(path)
  # Prepared arrays never change after the rename, so staleness is checked once, at open.
  spec["recheck_cached_data"] = "open"
  context = ts.Context({"cache_pool": {"total_bytes_limit": int(cache_bytes)}})
  try:
    arr = ts.open(spec, read=True, context=context).result()
  except ValueError as e:
    raise DataError(f"cannot open token array {path} ({first_line(e, 160)}); run "
                    "pregate-prepare to create it") from e
  if arr.rank != 1 or arr.dtype.name not in ("uint16", "uint32"):
    raise DataError(f"{path} is not a 1-D uint16/uint32 token array (rank {arr.rank}, "
                    f"{arr.dtype.name}); re-run pregate-prepare")
  split = os.path.basename(path.rstrip("/"))
  data_dir = path.rstrip("/")[:-len(split)].rstrip("/") or "."
  sha = None
  if split in store.SPLITS:
    try:
      manifest = store.load_manifest(data_dir)
    except DataError:
      manifest = None
    if manifest is not None:
      if manifest[f"{split}_tokens"] != arr.shape[0]:
        raise DataError(f"{path} holds {arr.shape[0]:,} tokens but its manifest says "
                        f"{manifest[f'{split}_tokens']:,}; re-run pregate-prepare")
      sha = manifest[f"{split}_sha256"]
  return TokenArray(arr, path, split, sha)


def open_split(data_dir: str, split: str, **kwargs: Any) -> TokenArray:
  """open_tokens(data_dir/split) for split in ('train', 'val')."""
  if split not in store.SPLITS:
    raise DataError(f"unknown split {split!r}; use one of {', '.join(store.SPLITS)}")
  return open_tokens(store.join(data_dir, split), **kwargs)


class BatchSource:
  """grain random-access source whose item i is a whole batch (this process's rows).

  One item per batch (not per window) lets each batch be one vectorised read, which BUILD_NOTES
  (stack facts) measured at ~10x a per-example grain pipeline.
  """

  def __init__(self, tokens: TokenArray, *, global_batch: int, seq_len: int, seed: int,
               num_batches: int, process_index: int = 0, process_count: int = 1,
               stream: tuple[int, ...] = ()):
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
    rows = self.global_batch // self.process_count
    self._rows = slice(self.process_index * rows, (self.process_index + 1) * rows)

  def __len__(self) -> int:
    return self.num_batches

  def __repr__(self) -> str:
    # grain's DataLoader compares reprs to check a checkpoint belongs to this source.
    return (f"BatchSource(tokens={len(self.tokens)}, global_batch={self.global_batch}, "
            f"seq_len={self.seq_len}, seed={self.seed}, stream={self.stream}, "
            f"process={self.process_index}/{self.process_count})")

  def global_starts(self, index: int) -> np.ndarray:
    """Start offsets of all global_batch windows of batch `index` (same on every process)."""
    rng = np.random.default_rng([self.seed, int(index), *self.stream])
    return rng.integers(0, len(self.tokens) - self.seq_len, size=self.global_batch)

  def __getitem__(self, index: int) -> Batch:
    index = int(index)
    if not 0 <= index < self.num_batches:
      raise IndexError(f"batch {index} out of range [0, {self.num_batches})")
    windows = self.tokens.read_windows(self.global_starts(index)[self._rows], self.seq_len + 1)
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

  def describe(self) -> dict[str, Any]:
    """What decides the batch contents (not num_batches or the process split): resume key."""
    return {"seed": self.seed, "global_batch": self.global_batch, "seq_len": self.seq_len,
            "tokens": len(self.tokens), "data_sha256": self.tokens.known_sha256,
            "stream": list(self.stream)}


class ResumableIterator(grain.DatasetIterator):
  """grain iterator whose state also names the pipeline, so resuming into a different one fails.

  grain's own state is only {'next_index': n}; restoring it under another seed, batch shape or
  dataset would silently train on different data.
  """

  def __init__(self, parent: grain.DatasetIterator, pipeline: dict[str, Any]):
    super().__init__(parent)
    self.pipeline = pipeline

  def __next__(self) -> Batch:
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {**self._parent.get_state(), "pipeline": self.pipeline}

  def set_state(self, state: dict[str, Any]) -> None:
    saved = state.get("pipeline", self.pipeline)
    if saved != self.pipeline:
      diff = {k: (saved.get(k), self.pipeline.get(k)) for k in self.pipeline
              if saved.get(k) != self.pipeline.get(k)}
      raise DataError(f"data iterator state belongs to another pipeline (saved vs now: {diff}); "
                      "resume with the original seed, batch shape and data, or start fresh")
    self._parent.set_state({k: v for k, v in state.items() if k != "pipeline"})


def make_train_iter(token_array: TokenArray, *, global_batch: int, seq_len: int, seed: int,
                    num_batches: int, process_index: int = 0, process_count: int = 1,
                    prefetch: int = DEFAULT_PREFETCH,
                    num_threads: int = DEFAULT_NUM_THREADS) -> ResumableIterator:
  """Training batches 0..num_batches-1 with background prefetch and exact get/set_state.

  Works with orbax via grain.checkpoint.CheckpointSave(it) / CheckpointRestore(it).
  """
  source = BatchSource(token_array, global_batch=global_batch, seq_len=seq_len, seed=seed,
                       num_batches=num_batches, process_index=process_index,
                       process_count=process_count)
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  parent = iter(grain.MapDataset.source(source).to_iter_dataset(options))
  it = ResumableIterator(parent, source.describe())
  it.start_prefetch()  # the first batches load while the train step compiles
  return it


def eval_batches(token_array: TokenArray, *, batch_size: int, seq_len: int, n_batches: int,
                 seed: int = 0, process_index: int = 0,
                 process_count: int = 1) -> tuple[list[Batch], dict[str, Any]]:
  """A fixed set of validation batches and the description that reproduces them exactly.

  Drawn from a seed stream disjoint from training's, so the same seed never yields train
  windows; the description is small enough to store in a checkpoint.
  """
  source = BatchSource(token_array, global_batch=batch_size, seq_len=seq_len, seed=seed,
                       num_batches=n_batches, process_index=process_index,
                       process_count=process_count, stream=(_EVAL_STREAM,))
  description = {"seed": int(seed), "n_batches": int(n_batches), "batch_size": int(batch_size),
                 "seq_len": int(seq_len), "split": token_array.split,
                 "tokens": len(token_array), "sha256": token_array.sha256,
                 "stream": _EVAL_STREAM}
  return [source[i] for i in range(n_batches)], description


def reproduce_eval_batches(token_array: TokenArray, description: dict[str, Any], *,
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
                            process_count=process_count)
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
