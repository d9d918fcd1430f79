"""Config sanity: every reason a config cannot run, found before anything is built or written.

Pure: takes the plain config dict, returns the problems (each naming the field and the fix);
`check` raises them all at once as one ConfigError. Every field of configs/base.py has a rule in
FIELDS (type and range; tests/test_config_fuzz.py fails for a field without one), so a wrong
type, NaN, an empty string, a negative or a huge value is refused here, before the workdir is
touched, instead of crashing (or claiming the workdir) later. Cross-field rules follow.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from core.checks import is_int
from core.errors import ConfigError
from gates.ownership import flatten
from models.config import ATTENTION_IMPLS, HF_IDENTITY, REMAT_POLICIES

TOKENIZERS = ("char", "byte", "bpe")
DTYPES = ("float32", "bfloat16", "float16")
FAMILIES = tuple(HF_IDENTITY)
FORMATS = ("auto", "txt", "jsonl", "parquet")
VAL_SPLITS = ("documents", "tail")
I32 = 2**31 - 1  # step counters are int32; numpy seeds and grain indices stay below too
BIG = 2**20  # a generous cap for sizes, counts and mesh axes (beyond any run this stack does)


@dataclasses.dataclass(frozen=True)
class Rule:
  """One field: its kind (int, float, bool, str, choice) and range, with what it means."""

  kind: str
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False  # low itself excluded
  high_open: bool = False
  choices: tuple[Any, ...] = ()
  extra: tuple[Any, ...] = ()  # values allowed outside the range (e.g. mesh.data=-1)
  empty_ok: bool = True  # for str

  def problem(self, path: str, value: Any) -> str | None:
    if self.kind == "bool":
      ok = isinstance(value, bool) or (value is None and None in self.extra)
      return None if ok else f"{path} must be true or false, got {value!r}"
    if self.kind == "choice":
      return None if value in self.choices and type(value) is type(self.choices[0]) else (
          f"{path}={value!r} is not one of {self.choices}")
    if self.kind == "str":
      if not isinstance(value, str):
        return f"{path} must be a string, got {value!r}"
      return None if value or self.empty_ok else f"{path} must not be empty"
    if value in self.extra and is_int(value):
      return None
    # A float field takes an int only in int32 range (JAX would overflow converting more).
    ok_type = is_int(value) if self.kind == "int" else (
        isinstance(value, float) or (is_int(value) and abs(value) <= I32))
    if not ok_type:
      return f"{path} must be {'an integer' if self.kind == 'int' else 'a number'}, got {value!r}"
    if not math.isfinite(value):
      return f"{path} must be finite, got {value!r}"
    also = f" (or {', '.join(map(str, self.extra))})" if self.extra else ""
    if not (value > self.low if self.low_open else value >= self.low):
      bound = "> 0" if self.kind == "int" and self.low == 1 else (
          f"{'>' if self.low_open else '>='} {_num(self.low)}")
      return f"{path}={value!r} must be {bound}{also}"
    if not (value < self.high if self.high_open else value <= self.high):
      return f"{path}={value!r} must be {'<' if self.high_open else '<='} {_num(self.high)}"
    return None


def _num(x: float) -> str:
  return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"


def _int(low: int, high: int = I32, **kw: Any) -> Rule:
  return Rule("int", low, high, **kw)


def _pos(high: float = math.inf) -> Rule:
  return Rule("float", 0.0, high, low_open=True)


FIELDS: dict[str, Rule] = {
    "seed": _int(0), "train_steps": _int(1),
    "model.vocab_size": _int(1, 2**24), "model.d_model": _int(1, BIG),
    "model.n_layers": _int(1, 4096), "model.n_heads": _int(1, BIG),
    "model.n_kv_heads": _int(1, BIG), "model.d_ff": _int(1, BIG),
    "model.max_seq_len": _int(1, BIG), "model.rope_theta": _pos(),
    "model.tie_embeddings": Rule("bool"), "model.dtype": Rule("choice", choices=DTYPES),
    "model.param_dtype": Rule("choice", choices=DTYPES), "model.norm_eps": _pos(1.0),
    "model.remat": Rule("choice", choices=REMAT_POLICIES),
    "model.family": Rule("choice", choices=FAMILIES), "model.qkv_bias": Rule("bool"),
    "model.attention": Rule("choice", choices=ATTENTION_IMPLS),
    "model.scan_layers": Rule("bool", extra=(None,)), "model.loss_chunk": _int(0, BIG),
    # corpus may be empty when data.sources names the inputs (the data spec checks which).
    "data.corpus": Rule("str"), "data.format": Rule("choice", choices=FORMATS),
    "data.text_field": Rule("str", empty_ok=False), "data.txt_separator": Rule("str"),
    "data.tokenizer_json": Rule("str"), "data.bpe_vocab_size": _int(0, 2**24),
    "data.special_tokens": Rule("str"), "data.eot_token": Rule("str"),
    "data.val_split": Rule("choice", choices=VAL_SPLITS), "data.workers": _int(0, 1024),
    "data.mixture_block": _int(1, BIG),
    "data.tokenizer": Rule("choice", choices=TOKENIZERS),
    "data.val_fraction": Rule("float", 0.0, 1.0, low_open=True, high_open=True),
    "data.data_dir": Rule("str"), "data.val_dir": Rule("str"),
    "batch.global_batch": _int(1, BIG), "batch.seq_len": _int(1, BIG),
    "batch.grad_accum": _int(1, BIG),
    # lr past 100 overflows the schedule's float32 arithmetic at huge values; no run uses it.
    "optimizer.lr": _pos(100.0), "optimizer.b1": Rule("float", 0.0, 1.0, high_open=True),
    "optimizer.b2": Rule("float", 0.0, 1.0, high_open=True), "optimizer.eps": _pos(),
    "optimizer.weight_decay": Rule("float", 0.0), "optimizer.grad_clip": Rule("float", 0.0),
    "optimizer.skip_nonfinite": _int(0),
    "schedule.warmup_steps": _int(0), "schedule.decay_steps": _int(0),
    "schedule.min_lr_ratio": Rule("float", 0.0, 1.0),
    "eval.eval_every": _int(1), "eval.eval_batches": _int(1, BIG), "eval.batch_size": _int(0, BIG),
    "eval.early_stop_patience": _int(0), "eval.early_stop_min_delta": Rule("float", 0.0),
    "checkpoint.save_every": _int(1), "checkpoint.keep": _int(1, BIG),
    "checkpoint.keep_best": _int(0, BIG), "checkpoint.async_save": Rule("bool"),
    "logging.log_every": _int(1), "logging.tensorboard": Rule("bool"),
    "logging.weight_norms": Rule("bool"),
    "mesh.data": _int(1, BIG, extra=(-1,)), "mesh.fsdp": _int(1, BIG),
    "mesh.tensor": _int(1, BIG), "mesh.cpu_devices": _int(0, 1024),
    # teacher: "" = no distillation; a path or hf:DIR is checked by the preflight's teacher
    # check (train/run/teacher.py), from its files. A temperature past 100 flattens any
    # teacher to uniform; no distillation uses it.
    "distill.teacher": Rule("str"), "distill.alpha": Rule("float", 0.0, 1.0),
    "distill.temperature": _pos(100.0),
}
MAX_STEP_TOKENS = 2**27  # global_batch x seq_len; and the eval set's tokens
_MISSING = object()


def _fix(path: str) -> str:
  return f" (--config.{path}; configs/base.py documents it)"


def problems(cfg: Mapping[str, Any]) -> list[str]:
  """All problems of a config dict (the layout of configs/base.py): each field's rule first,
  then, once every field is valid, the rules that tie fields together."""
  flat = flatten(cfg)
  out = []
  for path, rule in FIELDS.items():
    value = flat.get(path, _MISSING)
    if value is _MISSING:
      out.append(f"{path} is missing from the config; declare it as configs/base.py does")
      continue
    found = rule.problem(path, value)
    if found:
      out.append(found + _fix(path))
  return out or _cross(cfg)


def _cross(cfg: Mapping[str, Any]) -> list[str]:
  out: list[str] = []
  batch, sched, model, ev = cfg["batch"], cfg["schedule"], cfg["model"], cfg["eval"]
  if batch["global_batch"] % batch["grad_accum"]:
    out.append(f"batch.global_batch={batch['global_batch']} is not divisible by "
               f"batch.grad_accum={batch['grad_accum']}")
  if batch["seq_len"] > model["max_seq_len"]:
    out.append(f"batch.seq_len={batch['seq_len']} exceeds model.max_seq_len="
               f"{model['max_seq_len']}; lower seq_len or raise max_seq_len")
  if batch["global_batch"] * batch["seq_len"] > MAX_STEP_TOKENS:
    out.append(f"batch.global_batch x batch.seq_len = {batch['global_batch'] * batch['seq_len']:,}"
               f" tokens per step exceeds {MAX_STEP_TOKENS:,}; lower one of them")
  eval_tokens = ev["eval_batches"] * (ev["batch_size"] or batch["global_batch"]) * batch["seq_len"]
  if eval_tokens > MAX_STEP_TOKENS:
    out.append(f"eval.eval_batches x eval batch x seq_len = {eval_tokens:,} tokens exceeds "
               f"{MAX_STEP_TOKENS:,} (they are held in memory); lower eval.eval_batches")
  if sched["warmup_steps"] > cfg["train_steps"]:
    out.append(f"schedule.warmup_steps={sched['warmup_steps']} must lie in "
               f"[0, train_steps={cfg['train_steps']}]")
  return out


def check(cfg: Mapping[str, Any]) -> None:
  found = problems(cfg)
  if found:
    raise ConfigError("invalid config: " + "; ".join(found))
