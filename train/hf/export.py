"""Export a validated pregate checkpoint as a Hugging Face model directory.

Only `train.restore.load_for_eval` reads the checkpoint, so only checkpoints whose metadata and
stored tensors prove their architecture are exported. The directory is assembled next to --out
and renamed into place in one step: a failure leaves nothing half-written, and an existing
--out is never replaced.

Written: config.json (rope_theta both top-level, read by transformers 4.x, and in
rope_parameters, read by 5.x), generation_config.json, model.safetensors with metadata
{"format": "pt"} (sharded with model.safetensors.index.json above max_shard_bytes),
tokenizer.json + tokenizer_config.json, README.md (the model card, with `pregate-ship`'s verdict
when WORKDIR/ship.json judged the exported step) and pregate_metadata.json (the training
provenance, so importing the export restores it and a re-export is identical).
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from core.errors import ConfigError, PregateError
from core.progress import Progress
from models.config import ModelConfig
from train.hf import model_card, tokenizer_json
from train.hf.weights import to_hf

DTYPES = ("float32", "bfloat16")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9  # transformers' "5GB"
SIDECAR = "pregate_metadata.json"
SHIP_JSON = "ship.json"  # pregate-ship's verdict in the run's workdir (train/cli/ship.py)
# Checkpoint metadata carried through an export, so an import restores its provenance.
CARRIED = ("schema", "step", "tokens_seen", "planned_tokens", "val_loss", "best_val_loss",
           "eval_batches", "gate", "data", "config", "mesh", "libraries", "git_commit",
           "termination", "packing")


class ExportError(PregateError):
  """The export directory cannot be written."""


def hf_config(cfg: ModelConfig, dtype: str, eos_id: int | None = None) -> dict[str, Any]:
  """config.json for LlamaForCausalLM / Qwen2ForCausalLM, every value written explicitly
  (HF's defaults differ from pregate's, e.g. rms_norm_eps 1e-6); eos_id is the tokenizer's
  end-of-text id, if it has one."""
  out: dict[str, Any] = {
      "architectures": [cfg.hf_architecture], "model_type": cfg.hf_model_type,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "rope_scaling": None, "tie_word_embeddings": cfg.tie_embeddings,
      "attention_dropout": 0.0, "initializer_range": 0.02, "use_cache": True,
      "bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": None,
      "dtype": dtype, "torch_dtype": dtype}
  if cfg.family == "llama":
    out.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
  else:
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers,
               layer_types=["full_attention"] * cfg.n_layers)
  return out


def generation_config(eos_id: int | None = None) -> dict[str, Any]:
  """Greedy by default; generation stops at the end-of-text id where the tokenizer has one,
  else at max_length only."""
  return {"bos_token_id": None, "eos_token_id": eos_id, "pad_token_id": None,
          "do_sample": False}


def shard(tensors: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  """Consecutive groups of at most max_bytes (a larger tensor is a shard of its own)."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, arr in tensors.items():
    if shards[-1] and size + arr.nbytes > max_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = arr
    size += arr.nbytes
  return shards


def write_weights(tensors: Mapping[str, np.ndarray], out_dir: str, max_bytes: int) -> list[str]:
  """model.safetensors, or model-0000i-of-0000n.safetensors + index; returns the file names."""
  from safetensors.numpy import save_file
  groups = shard(tensors, max_bytes)
  meta = {"format": "pt"}
  progress = Progress("writing weights", sum(a.nbytes for a in tensors.values()))
  if len(groups) == 1:
    save_file(dict(groups[0]), os.path.join(out_dir, "model.safetensors"), metadata=meta)
    progress.update(progress.total)
    progress.close()
    return ["model.safetensors"]
  names, weight_map = [], {}
  for i, group in enumerate(groups, 1):
    name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
    save_file(dict(group), os.path.join(out_dir, name), metadata=meta)
    progress.update(sum(a.nbytes for a in group.values()))
    names.append(name)
    weight_map.update({t: name for t in group})
  progress.close()
  index = {"metadata": {"total_size": sum(a.nbytes for a in tensors.values())},
           "weight_map": weight_map}
  _write_json(os.path.join(out_dir, "model.safetensors.index.json"), index)
  return names + ["model.safetensors.index.json"]


def _write_json(path: str, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=False)
    f.write("\n")


def export_versions() -> dict[str, str]:
  out = {}
  for name in ("safetensors", "numpy"):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      out[name] = importlib.metadata.version(name)
  return out


def flat_params(model: Any) -> dict[str, np.ndarray]:
  """'blocks/0/attn/wq/kernel' -> host array for every nnx.Param of a restored model."""
  import jax
  from flax import nnx
  flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
  return {"/".join(str(p) for p in path): np.asarray(jax.device_get(var.get_value()))
          for path, var in flat}


def ship_record(checkpoint: str, step: int) -> dict[str, Any] | None:
  """`pregate-ship`'s verdict on this very step (WORKDIR/ship.json), for the model card; None
  when there is none, it judged another step, or it does not parse."""
  from train.ckpt.stepspec import checkpoint_dir
  path = os.path.join(os.path.dirname(checkpoint_dir(checkpoint)), SHIP_JSON)
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) and record.get("step") == step else None


def export(checkpoint: str, out: str, *, step: str | int = "latest", dtype: str = "float32",
           max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
           allow_incomplete_card: bool = False) -> list[str]:
  """Validate, convert and write; returns report lines. Raises PregateError subclasses."""
  from train.ckpt import metadata
  from train.ckpt.restore import load_for_eval
  if dtype not in DTYPES:
    raise ConfigError(f"--dtype={dtype!r} is not one of {DTYPES}")
  if max_shard_bytes < 1:
    raise ConfigError(f"max shard size must be positive, got {max_shard_bytes}")
  out = os.path.abspath(out)
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConfigError(f"--out={out} exists and is not an empty directory; pick a new path "
                      f"(an export never overwrites)")
  restored = load_for_eval(checkpoint, step)
  meta, cfg = restored.meta, restored.model.cfg
  source = f"checkpoint {checkpoint} step {restored.step}"
  if not allow_incomplete_card:
    model_card.require(meta, source, checkpoint)
  import ml_dtypes
  # to_hf refuses a parameter with no HF counterpart, before anything is written.
  tensors = to_hf(flat_params(restored.model),
                  np.dtype(dtype) if dtype != "bfloat16" else ml_dtypes.bfloat16)
  kind = restored.tokenizer.to_json()["type"]
  parent, tmp = os.path.dirname(out), None
  try:
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    files = write_weights(tensors, tmp, max_shard_bytes)
    files += tokenizer_json.write(restored.tokenizer, tmp, cfg.max_seq_len)
    eos = restored.tokenizer.eos_id
    _write_json(os.path.join(tmp, "config.json"), hf_config(cfg, dtype, eos))
    _write_json(os.path.join(tmp, "generation_config.json"), generation_config(eos))
    _write_json(os.path.join(tmp, SIDECAR), metadata.carried(meta, CARRIED))
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
      f.write(model_card.render(meta, cfg, kind, dtype=dtype, export_versions=export_versions(),
                                eot=restored.tokenizer.to_json().get("eot"), eos_id=eos,
                                ship=ship_record(checkpoint, restored.step)))
    files += ["config.json", "generation_config.json", SIDECAR, "README.md"]
    os.chmod(tmp, 0o755)
    if os.path.isdir(out):
      os.rmdir(out)  # Empty (checked above); rename cannot replace a directory otherwise.
    os.rename(tmp, out)
  except OSError as e:
    raise ExportError(f"cannot write the export next to {out} ({e}); free space or pick "
                      f"another --out") from None
  finally:
    if tmp:
      shutil.rmtree(tmp, ignore_errors=True)
  n_bytes = sum(a.nbytes for a in tensors.values())
  lacking = model_card.missing_fields(meta)
  return [(f"exported {source} ({cfg.hf_architecture}, {len(tensors)} tensors, "
           f"{n_bytes / 2**20:.2f} MiB {dtype}) to {out}"),
          f"files: {', '.join(sorted(files))}"] + (
      [f"model card states as unknown: {', '.join(lacking)}"] if lacking else [])
