"""Config sanity: every reason a config cannot run, found before anything is built or written.

Pure: takes the plain config dict, returns the problems (each naming the field and the fix);
`check` raises them all at once as one ConfigError.
"""
from __future__ import annotations

from typing import Any, Mapping

from core.errors import ConfigError

TOKENIZERS = ("char", "byte", "bpe")


def _positive(cfg: Mapping[str, Any], path: str, kind: type = int) -> list[str]:
  node: Any = cfg
  for part in path.split("."):
    node = node[part]
  if kind is int and (not isinstance(node, int) or isinstance(node, bool)):
    return [f"{path} must be an integer, got {node!r}"]
  if not isinstance(node, (int, float)) or isinstance(node, bool) or not node > 0:
    return [f"{path} must be > 0, got {node!r}"]
  return []


def problems(cfg: Mapping[str, Any]) -> list[str]:
  """All problems of a config dict (the layout of configs/base.py)."""
  out: list[str] = []
  for path in ("train_steps", "batch.global_batch", "batch.seq_len", "batch.grad_accum",
               "eval.eval_every", "eval.eval_batches", "checkpoint.save_every", "checkpoint.keep",
               "logging.log_every"):
    out += _positive(cfg, path)
  out += _positive(cfg, "optimizer.lr", float)
  if out:
    return out
  batch, sched, opt, model = cfg["batch"], cfg["schedule"], cfg["optimizer"], cfg["model"]
  if batch["global_batch"] % batch["grad_accum"]:
    out.append(f"batch.global_batch={batch['global_batch']} is not divisible by "
               f"batch.grad_accum={batch['grad_accum']}")
  if batch["seq_len"] > model["max_seq_len"]:
    out.append(f"batch.seq_len={batch['seq_len']} exceeds model.max_seq_len="
               f"{model['max_seq_len']}; lower seq_len or raise max_seq_len")
  if not 0 <= sched["warmup_steps"] <= cfg["train_steps"]:
    out.append(f"schedule.warmup_steps={sched['warmup_steps']} must lie in "
               f"[0, train_steps={cfg['train_steps']}]")
  if sched["decay_steps"] < 0:
    out.append(f"schedule.decay_steps={sched['decay_steps']} must be >= 0 (0 = train_steps)")
  if not 0 <= sched["min_lr_ratio"] <= 1:
    out.append(f"schedule.min_lr_ratio={sched['min_lr_ratio']} must lie in [0, 1]")
  for name in ("b1", "b2"):
    if not 0 <= opt[name] < 1:
      out.append(f"optimizer.{name}={opt[name]} must lie in [0, 1)")
  if opt["weight_decay"] < 0 or opt["grad_clip"] < 0 or opt["eps"] <= 0:
    out.append("optimizer.weight_decay and grad_clip must be >= 0 and eps > 0")
  if cfg["data"]["tokenizer"] not in TOKENIZERS:
    out.append(f"data.tokenizer={cfg['data']['tokenizer']!r} is not one of {TOKENIZERS}")
  if not 0 < cfg["data"]["val_fraction"] < 1:
    out.append(f"data.val_fraction={cfg['data']['val_fraction']} must lie in (0, 1)")
  if cfg["eval"]["early_stop_patience"] < 0 or cfg["eval"]["batch_size"] < 0:
    out.append("eval.early_stop_patience and eval.batch_size must be >= 0")
  cpu = cfg["mesh"].get("cpu_devices", 0)
  if not isinstance(cpu, int) or isinstance(cpu, bool) or cpu < 0:
    out.append(f"mesh.cpu_devices={cpu!r} must be an integer >= 0 (0 = one per core)")
  return out


def check(cfg: Mapping[str, Any]) -> None:
  found = problems(cfg)
  if found:
    raise ConfigError("invalid config: " + "; ".join(found))
