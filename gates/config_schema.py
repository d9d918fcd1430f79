"""Every field of the experiment config, declared once: type, default, range or choices, resume
kind and a one-line doc (core/config_fields.py says how; the model's section is
models/config.py's ModelConfig).

configs/base.py builds its ConfigDict from `DEFAULTS`, gates/config_sanity.py checks `FIELDS`,
gates/ownership.py classifies by `kind_of`, tests/test_config_fuzz.py draws from `FIELDS`, and
`describe()` documents them, one line a field (text for a --config flag's help). `Config` is the
typed view code can pass around: `view(config.to_dict())`.

Why gates/: the root holds ModelConfig (models/, which needs jax), so the schema sits above
models/; gates/ (the sanity and ownership rules) and train/ read it, configs/ builds from it,
and it holds nothing but declarations.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from core.config_fields import BIG, KINDS, Field, build, defaults, field, fields
from core.config_fields import describe as _describe
from models.config import ModelConfig

TOKENIZERS = ("char", "byte", "bpe")
FORMATS = ("auto", "txt", "jsonl", "parquet")
VAL_SPLITS = ("documents", "tail")
ID, SCHED, X, SAFE = KINDS
_FRAC = dict(low=0.0, high=1.0)


@dataclasses.dataclass(frozen=True)
class Data:
  corpus: str = field("data/tinyshakespeare.txt", ID, "files, directories or globs, comma-"
                      "separated (.txt, .jsonl[.gz|.zst], .parquet); may be empty when sources "
                      "names the inputs")
  format: str = field("auto", ID, "input format; auto = by extension", choices=FORMATS)
  text_field: str = field("text", ID, "the JSONL field / Parquet column holding a document's "
                          "text", empty_ok=False)
  txt_separator: str = field("", ID, "text between documents of a .txt; '' = one document")
  tokenizer: str = field("char", ID, "tokenizer kind", choices=TOKENIZERS)
  tokenizer_json: str = field("", ID, "bpe: an existing tokenizer.json; '' = train one")
  bpe_vocab_size: int = field(0, ID, "bpe training: ids incl. special tokens; 0 = "
                              "model.vocab_size", low=0, high=2**24)
  special_tokens: str = field("", ID, "bpe training: extra special tokens, comma-separated")
  eot_token: str = field("<|endoftext|>", ID, "appended after every document; '' = none")
  val_fraction: float = field(0.1, ID, "share held out for validation", low=0.0, high=1.0,
                              low_open=True, high_open=True)
  val_split: str = field("documents", ID, "documents (whole ones, by content hash) | tail "
                         "(last tokens)", choices=VAL_SPLITS)
  workers: int = field(0, X, "tokenizing processes; 0 = one per CPU core", low=0, high=1024)
  data_dir: str = field("", ID, "prepared shards; '' = WORKDIR/data")
  val_dir: str = field("", ID, "separately prepared validation shard; '' = data_dir's split")
  sources: dict[str, Any] = field({}, ID, "a weighted mixture: name -> dict(weight=w, corpus=... "
                                  "or data_dir=..., format, text_field, txt_separator)")
  skip_batches: str = field("", SCHED, "batch windows never trained, 'A:B,C:D' (batch i is "
                           "what step i+1 trains when nothing is skipped); a rollback adds its "
                           "own")
  mixture_block: int = field(2048, ID, "a mixture's batches follow the weights in blocks of "
                             "this many sequences", low=1, high=BIG)
  document_masking: bool | None = field(None, ID, "attention stays inside each packed "
                                        "document (segment ids); None = on when the training "
                                        "split holds more than one document")
  document_positions: bool | None = field(None, ID, "RoPE positions restart at each packed "
                                          "document; None = as document_masking")


@dataclasses.dataclass(frozen=True)
class Batch:
  global_batch: int = field(32, SCHED, "sequences per step, all devices", low=1, high=BIG)
  seq_len: int = field(128, SCHED, "tokens per training sequence", low=1, high=BIG)
  grad_accum: int = field(1, SCHED, "micro-batches per step; divides global_batch", low=1,
                          high=BIG)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  # lr past 100 overflows the schedule's float32 arithmetic at huge values; no run uses it.
  lr: float = field(1e-3, SCHED, "peak learning rate (AdamW)", low=0.0, high=100.0,
                    low_open=True)
  b1: float = field(0.9, SCHED, "AdamW beta1", **_FRAC, high_open=True)
  b2: float = field(0.95, SCHED, "AdamW beta2", **_FRAC, high_open=True)
  eps: float = field(1e-8, SCHED, "AdamW epsilon", low=0.0, low_open=True)
  weight_decay: float = field(0.1, SCHED, "decoupled weight decay", low=0.0)
  grad_clip: float = field(1.0, SCHED, "global gradient-norm clip", low=0.0)
  skip_nonfinite: int = field(0, SCHED, "non-finite loss/grad: 0 = stop the run; N = skip such "
                              "updates, stopping once more than N were skipped", low=0)


@dataclasses.dataclass(frozen=True)
class Schedule:
  warmup_steps: int = field(100, SCHED, "linear warmup steps; at most train_steps", low=0)
  decay_steps: int = field(0, SCHED, "cosine decay length; 0 = train_steps", low=0)
  min_lr_ratio: float = field(0.1, SCHED, "final learning rate / peak", **_FRAC)


@dataclasses.dataclass(frozen=True)
class Eval:
  eval_every: int = field(250, SAFE, "steps between evaluations", low=1)
  eval_batches: int = field(20, SAFE, "batches per evaluation", low=1, high=BIG)
  batch_size: int = field(0, SAFE, "eval batch; 0 = the train global batch", low=0, high=BIG)
  early_stop_patience: int = field(0, SAFE, "evaluations without improvement before stopping; "
                                   "0 = off", low=0)
  early_stop_min_delta: float = field(0.0, SAFE, "smallest val-loss drop that counts as "
                                      "improvement", low=0.0)
  tasks: str = field("", SAFE, "multiple-choice tasks scored in the loop: JSONL paths, comma-"
                     "separated; 'smoke' = the smoke task built from the validation split")
  tasks_every: int = field(0, SAFE, "steps between task scorings; 0 = at each evaluation",
                           low=0)
  early_stop_metric: str = field("val_loss", SAFE, "what early stopping watches: val_loss | "
                                 "task:NAME:acc | task:NAME:acc_norm (a task of eval.tasks; "
                                 "min_delta is then in accuracy)", empty_ok=False)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  save_every: int = field(500, SAFE, "steps between checkpoints", low=1)
  keep: int = field(2, SAFE, "latest checkpoints kept", low=1, high=BIG)
  keep_best: int = field(1, SAFE, "best-by-val-loss checkpoints kept besides", low=0, high=BIG)
  async_save: bool = field(True, SAFE, "write checkpoints in the background")


@dataclasses.dataclass(frozen=True)
class Logging:
  log_every: int = field(50, SAFE, "steps between metric lines", low=1)
  tensorboard: bool = field(True, SAFE, "event files under WORKDIR/tensorboard (process 0)")
  weight_norms: bool = field(True, SAFE, "parameter and update norms in the step (and the "
                             "parameter-overflow check)")
  profile_steps: str = field("", SAFE, "A:B = a jax.profiler trace of steps A to B in "
                             "WORKDIR/profile (TensorBoard's profile plugin); '' = none")


@dataclasses.dataclass(frozen=True)
class Mesh:
  data: int = field(-1, X, "data-parallel axis; -1 = the devices left over", low=1, high=BIG,
                    extra=(-1,))
  fsdp: int = field(1, X, "parameter-sharding axis", low=1, high=BIG)
  tensor: int = field(1, X, "tensor-parallel axis", low=1, high=BIG)
  cpu_devices: int = field(0, X, "XLA devices a CPU host's cores are split into; 0 = auto",
                           low=0, high=1024)
  device_memory_gb: float = field(0.0, SAFE, "memory per device in GB (10^9 bytes) the compiled "
                                  "step must fit (contract memory-fit); 0 = the device's own "
                                  "(accelerators) or the host's available memory (CPU)", low=0.0,
                                  high=1e6)


@dataclasses.dataclass(frozen=True)
class Distill:
  # The teacher is identified by content, recorded in every checkpoint and compared on resume
  # (train/run/teacher.py), so its spelling (relative, absolute, pinned or not) may change.
  teacher: str = field("", SAFE, "PATH[:STEP] (a pregate run) or hf:DIR; '' = off")
  alpha: float = field(0.5, SCHED, "loss = (1 - alpha) CE + alpha KL(teacher || student)",
                       **_FRAC)
  # A temperature past 100 flattens any teacher to uniform; no distillation uses it.
  temperature: float = field(1.0, SCHED, "distillation softmax temperature (loss x T^2)",
                             low=0.0, high=100.0, low_open=True)


@dataclasses.dataclass(frozen=True)
class Guard:
  # OLMo-core's skip-step optimizers: a rolling interval of 128 steps, 6 standard deviations,
  # judged once half the interval is filled (docs/decisions.md, "A run that heals itself").
  spike_window: int = field(128, SCHED, "steps of loss and gradient-norm history a step is "
                            "judged against; 0 = no spike test", low=0, high=4096)
  spike_sigma: float = field(6.0, SCHED, "a step whose loss or gradient norm exceeds the "
                             "window's mean by this many standard deviations is skipped",
                             low=0.0, low_open=True, high=1000.0)
  rollback_skips: int = field(3, SCHED, "spike skips within rollback_window steps that roll "
                              "the run back to its last good checkpoint; 0 = never", low=0)
  rollback_window: int = field(50, SCHED, "steps over which rollback_skips are counted",
                               low=1)
  rollback_skip_batches: int = field(0, SCHED, "a rollback skips at least this many batches "
                                     "from the first suspicious one (PaLM skipped 200-500); "
                                     "0 = up to the step it was decided at", low=0)
  max_rollbacks: int = field(3, SCHED, "rollbacks before the run stops (exit 4)", low=0)
  watchdog_factor: float = field(10.0, SAFE, "no step completed within this many median step "
                                 "times (at least watchdog_floor_s): the run is hung", low=1.0)
  watchdog_floor_s: float = field(300.0, SAFE, "the shortest time the watchdog waits for a "
                                  "step", low=0.0, low_open=True)
  watchdog_exit: bool = field(True, SAFE, "a hung run exits (code 76) so a scheduler restarts "
                              "it; False = report and keep waiting")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """The typed experiment config (attribute access a type checker checks)."""

  seed: int = field(0, ID, "parameter init and data order", low=0)
  train_steps: int = field(1000, SCHED, "optimizer steps of the whole run", low=1)
  model: ModelConfig
  data: Data
  batch: Batch
  optimizer: Optimizer
  schedule: Schedule
  eval: Eval
  checkpoint: Checkpoint
  logging: Logging
  mesh: Mesh
  distill: Distill
  guard: Guard


FIELDS: tuple[Field, ...] = tuple(fields(Config))
DEFAULTS: dict[str, Any] = defaults(Config)
_BY_PATH = {f.path: f for f in FIELDS}


def view(cfg: Mapping[str, Any]) -> Config:
  """The typed view of a config dict (a ConfigDict's to_dict()); its model section validates
  as ModelConfig does (ModelConfigError)."""
  return build(Config, cfg)


def field_at(path: str) -> Field:
  """The declaration of a dotted field path (KeyError if none)."""
  return _BY_PATH[path]


def kind_of(path: str) -> str:
  """The resume kind of a dotted key: its field's, or the nearest declared ancestor's (a
  mixture source's weight is data.sources'). A key this code does not declare (recorded by an
  older version) takes the strictest kind of its section, whose meaning may hang on it; at the
  top level, safe."""
  parts = path.split(".")
  for n in range(len(parts), 0, -1):
    found = _BY_PATH.get(".".join(parts[:n]))
    if found:
      return found.kind
  section = parts[0] + "."
  kinds = {f.kind for f in FIELDS if f.path.startswith(section)}
  return next((k for k in KINDS if k in kinds), SAFE) if len(parts) > 1 else SAFE


def describe() -> str:
  """Every field as one line: path, type = default, range or choices, resume kind, doc."""
  return _describe(Config)
