"""Import a Hugging Face Llama/Qwen2 directory as a validated pregate checkpoint.

`read_config` maps config.json onto a ModelConfig and refuses, with one line naming the field,
everything pregate cannot represent exactly: rope scaling or a non-default rope type, head_dim
!= hidden/heads, q/k norms, MLP / o_proj / lm_head biases, sliding windows, activations other
than SiLU; `weights.from_hf` refuses missing, extra, mis-shaped and mis-typed tensors. The
checkpoint is written with pregate's Checkpointer (parameters and metadata; no optimizer state,
as a published model has none), stamped with its architecture identity and tokenizer, then
re-read through `train.restore.load_for_eval`, so it passes the same architecture-match contract
as any pregate checkpoint before this returns, and its arrays are compared bit for bit.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from core.errors import ConfigError
from models.config import HF_IDENTITY, ModelConfig, ModelConfigError
from train.data.tokenizer import Tokenizer
from train.hf import export as export_lib
from train.hf import tokenizer_json
from train.hf.weights import HFConversionError, check_tensors, from_hf, signature

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
# transformers' defaults for fields a config.json may leave out.
_HF_DEFAULTS = {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
                "hidden_act": "silu"}
INIT_PREFIX = "hf:"


def _refuse(field: str, value: Any, why: str) -> HFConversionError:
  return HFConversionError(f"config.json {field}={value!r}: {why}; pregate cannot represent "
                           f"this model exactly, so it is not imported")


def _load_json(path: str) -> dict[str, Any]:
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except FileNotFoundError:
    raise HFConversionError(f"{path} does not exist; pass a Hugging Face model directory "
                            f"(config.json + safetensors weights)") from None
  except (OSError, ValueError) as e:
    raise HFConversionError(f"{path} is not readable JSON ({e})") from None
  if not isinstance(obj, dict):
    raise HFConversionError(f"{path} is not a JSON object")
  return obj


def _rope_theta(c: Mapping[str, Any]) -> float:
  """θ from rope_parameters (transformers 5.x) and/or top-level rope_theta (4.x); any scaling
  or non-default type is refused, and the two forms must agree."""
  params = c.get("rope_parameters")
  if params is not None and not isinstance(params, dict):
    raise _refuse("rope_parameters", params, "expected an object")
  params = params or {}
  if c.get("rope_scaling"):
    raise _refuse("rope_scaling", c["rope_scaling"], "rope scaling is not supported")
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type != "default":
    raise _refuse("rope_parameters.rope_type", rope_type, "only the default rope type is "
                  "supported (no scaling)")
  extra = sorted(set(params) - {"rope_type", "type", "rope_theta"})
  if extra:
    raise _refuse(f"rope_parameters.{extra[0]}", params[extra[0]], "rope scaling parameters "
                  "are not supported")
  thetas = {float(x) for x in (params.get("rope_theta"), c.get("rope_theta")) if x is not None}
  if len(thetas) > 1:
    raise _refuse("rope_theta", c.get("rope_theta"), f"differs from rope_parameters.rope_theta="
                  f"{params.get('rope_theta')!r}; transformers 4.x and 5.x would disagree")
  return thetas.pop() if thetas else _HF_DEFAULTS["rope_theta"]


def read_config(hf_dir: str) -> tuple[ModelConfig, dict[str, Any]]:
  """config.json -> (ModelConfig, the raw config), refusing what pregate cannot represent."""
  c = _load_json(os.path.join(hf_dir, "config.json"))
  families = {arch: family for family, (arch, _) in HF_IDENTITY.items()}
  archs = c.get("architectures") or []
  if len(archs) != 1 or archs[0] not in families:
    raise _refuse("architectures", archs, f"pregate imports exactly one of "
                  f"{sorted(families)}")
  family = families[archs[0]]
  if c.get("model_type") != HF_IDENTITY[family][1]:
    raise _refuse("model_type", c.get("model_type"), f"{archs[0]} needs model_type "
                  f"{HF_IDENTITY[family][1]!r}")
  act = c.get("hidden_act", _HF_DEFAULTS["hidden_act"])
  if act != "silu":
    raise _refuse("hidden_act", act, "only SiLU (SwiGLU MLP) is supported")
  for key in ("attention_bias", "mlp_bias", "use_sliding_window", "qk_norm", "use_qk_norm"):
    if c.get(key):
      why = {"attention_bias": "biases on q/k/v AND o_proj (Llama attention_bias) are not "
                               "supported; o_proj has no bias in pregate",
             "mlp_bias": "MLP biases are not supported",
             "use_sliding_window": "sliding-window attention is not supported"}.get(
                 key, "q/k norms are not supported")
      raise _refuse(key, c[key], why)
  layer_types = c.get("layer_types") or []
  if any(t != "full_attention" for t in layer_types):
    raise _refuse("layer_types", sorted(set(layer_types)), "only full attention in every "
                  "layer is supported (no sliding window)")
  heads, hidden = c.get("num_attention_heads"), c.get("hidden_size")
  head_dim = c.get("head_dim")
  if head_dim is not None and isinstance(heads, int) and isinstance(hidden, int) and heads and \
      head_dim != hidden // heads:
    raise _refuse("head_dim", head_dim, f"must equal hidden_size/num_attention_heads = "
                  f"{hidden}/{heads}")
  dtype = c.get("dtype") or c.get("torch_dtype") or "float32"
  if dtype not in _DTYPES:
    raise _refuse("dtype", dtype, f"weights must be one of {sorted(_DTYPES)}")
  kv = c.get("num_key_value_heads")
  try:
    cfg = ModelConfig(
        vocab_size=c.get("vocab_size"), d_model=hidden, n_layers=c.get("num_hidden_layers"),
        n_heads=heads, n_kv_heads=heads if kv is None else kv,
        d_ff=c.get("intermediate_size"), max_seq_len=c.get("max_position_embeddings"),
        rope_theta=_rope_theta(c),
        tie_embeddings=bool(c.get("tie_word_embeddings", _HF_DEFAULTS["tie_word_embeddings"])),
        dtype="float32", param_dtype=_DTYPES[dtype],
        norm_eps=float(c.get("rms_norm_eps", _HF_DEFAULTS["rms_norm_eps"])),
        family=family, qkv_bias=family == "qwen2")
  except (ModelConfigError, TypeError) as e:
    raise HFConversionError(f"config.json does not describe a model pregate can build: "
                            f"{' '.join(str(e).split())}") from None
  return cfg, c


def _weight_files(hf_dir: str) -> dict[str, list[str] | None]:
  """file -> the tensor names the index assigns it (None: a single unindexed file)."""
  index = os.path.join(hf_dir, "model.safetensors.index.json")
  if os.path.exists(index):
    weight_map = _load_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise HFConversionError(f"{index} has no weight_map")
    files: dict[str, list[str]] = {}
    for name, file in weight_map.items():
      files.setdefault(file, []).append(name)
    return files
  if os.path.exists(os.path.join(hf_dir, "model.safetensors")):
    return {"model.safetensors": None}
  raise HFConversionError(f"{hf_dir} has no model.safetensors or model.safetensors.index.json "
                          f"(pytorch .bin weights are not read: convert them to safetensors)")


_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                       "U8": "uint8", "BOOL": "bool"}


def read_headers(hf_dir: str) -> dict[str, tuple[tuple[int, ...], str]]:
  """Tensor name -> (shape, numpy dtype name) from the safetensors headers; no data read."""
  from safetensors import SafetensorError, safe_open
  out: dict[str, tuple[tuple[int, ...], str]] = {}
  for file in _weight_files(hf_dir):
    path = os.path.join(hf_dir, file)
    try:
      with safe_open(path, framework="numpy") as f:
        for key in list(f.keys()):
          s = f.get_slice(key)
          out[key] = (tuple(s.get_shape()), _SAFETENSORS_DTYPES.get(s.get_dtype(),
                                                                    s.get_dtype()))
    except (OSError, SafetensorError) as e:
      raise HFConversionError(f"cannot read {path} ({' '.join(str(e).split())})") from None
  return out


def check(hf_dir: str, tokenizer: Tokenizer | None = None) -> ModelConfig:
  """Every refusal `convert` would make, from config.json, the safetensors headers and the
  tokenizer files only: cheap, and nothing touches JAX's devices (for a pre-compile check)."""
  cfg, _ = read_config(hf_dir)
  headers = _untie(cfg, read_headers(hf_dir), None)
  check_tensors(headers, signature(cfg))
  _tokenizer(hf_dir, cfg, tokenizer)
  return cfg


def _untie(cfg: ModelConfig, found: dict[str, Any], tensors: dict[str, np.ndarray] | None
           ) -> dict[str, Any]:
  """A tied checkpoint may still store lm_head.weight: accepted only as an exact copy of the
  embedding (checked when the data is read), then dropped."""
  if not cfg.tie_embeddings or "lm_head.weight" not in found:
    return found
  embed = None if tensors is None else tensors.get("model.embed_tokens.weight")
  if embed is not None and not np.array_equal(tensors["lm_head.weight"], embed):
    raise HFConversionError("tie_word_embeddings=true but lm_head.weight differs from "
                            "model.embed_tokens.weight; fix tie_word_embeddings")
  return {k: v for k, v in found.items() if k != "lm_head.weight"}


def _tokenizer(hf_dir: str, cfg: ModelConfig, tokenizer: Tokenizer | None) -> Tokenizer:
  """The directory's own tokenizer; `tokenizer` only where it has no tokenizer.json."""
  has_own = os.path.exists(os.path.join(hf_dir, "tokenizer.json"))
  tok = tokenizer_json.read(hf_dir) if has_own or tokenizer is None else tokenizer
  if tokenizer is not None and tok != tokenizer:
    raise HFConversionError(f"the given {tokenizer.to_json()['type']} tokenizer differs from "
                            f"{hf_dir}/tokenizer.json, which the weights were trained with; "
                            f"leave --tokenizer out")
  if tok.vocab_size > cfg.vocab_size:
    raise HFConversionError(f"the tokenizer has {tok.vocab_size} symbols but vocab_size="
                            f"{cfg.vocab_size}; the embedding has no row for some ids")
  return tok


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of the directory's safetensors file(s), as numpy (bfloat16 via ml_dtypes)."""
  import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy for safetensors)
  from safetensors import SafetensorError, safe_open
  out: dict[str, np.ndarray] = {}
  for file, names in _weight_files(hf_dir).items():
    path = os.path.join(hf_dir, file)
    try:
      with safe_open(path, framework="numpy") as f:
        keys = list(f.keys())
        if names is not None and sorted(keys) != sorted(names):
          raise HFConversionError(f"{path} holds {len(keys)} tensors but the index assigns it "
                                  f"{len(names)}; the index and the shards disagree")
        for key in keys:
          if key in out:
            raise HFConversionError(f"tensor {key} appears in more than one shard")
          out[key] = f.get_tensor(key)
    except (OSError, SafetensorError) as e:
      raise HFConversionError(f"cannot read {path} ({' '.join(str(e).split())})") from None
  return out


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def convert(hf_dir: str, tokenizer: Tokenizer | None = None
            ) -> tuple[ModelConfig, dict[str, np.ndarray], Tokenizer, dict[str, Any]]:
  """Read and check a Hugging Face dir: (model config, flat pregate params, tokenizer, the
  provenance it carries). Writes nothing."""
  hf_dir = os.path.abspath(hf_dir)
  cfg, raw = read_config(hf_dir)
  tensors = read_tensors(hf_dir)
  params = from_hf(_untie(cfg, tensors, tensors), signature(cfg))
  tok = _tokenizer(hf_dir, cfg, tokenizer)
  sidecar_path = os.path.join(hf_dir, export_lib.SIDECAR)
  carried = _load_json(sidecar_path) if os.path.exists(sidecar_path) else {}
  files = sorted(f for f in os.listdir(hf_dir) if f.endswith(".safetensors"))
  provenance = {k: carried[k] for k in export_lib.CARRIED if k in carried and k != "schema"}
  provenance["imported_from"] = {
      "dir": hf_dir, "by": "train.hf.importer", "hf_config": raw,
      "pregate_export": bool(carried),
      "sha256": {f: _sha256(os.path.join(hf_dir, f)) for f in files}}
  return cfg, params, tok, provenance


def _nested(flat: Mapping[str, np.ndarray], cfg: ModelConfig) -> Any:
  """Flat 'a/b/c' arrays in the pure-dict tree orbax and TrainSetup.targets() use."""
  import jax
  from flax import nnx

  from models.params import abstract_model
  tree = nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param))
  return jax.tree_util.tree_map_with_path(
      lambda path, _: flat["/".join(str(getattr(k, "key", k)) for k in path)], tree)


def write_checkpoint(out_dir: str, cfg: ModelConfig, params: Mapping[str, np.ndarray],
                     tok: Tokenizer, provenance: Mapping[str, Any]) -> int:
  """A pregate checkpoint (out_dir/checkpoints/STEP: params + meta) stamped with the
  architecture identity and tokenizer; returns STEP (the export's step, else 0)."""
  from models.params import count_params
  from train.ckpt import fingerprint, metadata
  from train.ckpt.checkpointer import Checkpointer
  step = provenance.get("step") if isinstance(provenance.get("step"), int) else 0
  nested = _nested(params, cfg)
  meta = metadata.import_record(model_cfg=cfg, counts=count_params(cfg),
                                tokenizer=tok.to_json(), signature=signature(cfg), step=step,
                                provenance=provenance,
                                fingerprint=fingerprint.compute(nested, cfg, tokenizer=tok))
  ckpt = Checkpointer(os.path.join(out_dir, "checkpoints"), async_save=False)
  try:
    ckpt.save(step, nested, None, None, meta)
  finally:
    ckpt.close()
  return step


def import_hf(hf_dir: str, out_dir: str, tokenizer: Tokenizer | None = None) -> list[str]:
  """Convert hf_dir into a new pregate checkpoint dir `out_dir`, validated by load_for_eval
  (architecture contract) and a bit-exact comparison; returns report lines. On any failure the
  partly written out_dir is removed; an existing non-empty out_dir is refused."""
  from train.ckpt.restore import load_for_eval
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise ConfigError(f"--out={out_dir} exists and is not empty; pick a new directory (an "
                      f"import never overwrites)")
  cfg, params, tok, provenance = convert(hf_dir, tokenizer)
  try:
    step = write_checkpoint(out_dir, cfg, params, tok, provenance)
    restored = load_for_eval(out_dir, step)
    back = export_lib.flat_params(restored.model)
    differ = [p for p in params if not np.array_equal(back[p], params[p])]
    if differ or restored.tokenizer != tok:
      raise HFConversionError(f"the written checkpoint does not read back identically "
                              f"({differ[:3] or 'tokenizer'}); nothing was imported")
  except BaseException:
    shutil.rmtree(out_dir, ignore_errors=True)
    raise
  n = sum(a.size for a in params.values())
  unknown = "" if provenance["imported_from"]["pregate_export"] else (
      "; training provenance unknown (not a pregate export)")
  return [(f"imported {cfg.hf_architecture} from {os.path.abspath(hf_dir)} into "
           f"{out_dir}/checkpoints/{step}: {n:,} parameters ({cfg.param_dtype}), "
           f"{tok.to_json()['type']} tokenizer ({tok.vocab_size} symbols)"),
          ("validated: metadata, stored tensors and tokenizer pass the architecture check and "
           f"read back bit-identical{unknown}")]


def is_hf_init(spec: str) -> bool:
  return spec.startswith(INIT_PREFIX)


def init_from_hf(spec: str, workdir: str, subdir: str = "hf_init", flag: str = "--init") -> str:
  """`--init=hf:DIR` -> the --init PATH of DIR converted into WORKDIR/hf_init (converted once;
  a later run of the same command reuses it if it came from the same files). A distillation
  teacher `--teacher=hf:DIR` converts the same way into WORKDIR/hf_teacher."""
  import jax
  hf_dir = os.path.abspath(spec[len(INIT_PREFIX):])
  target = os.path.join(os.path.abspath(workdir), subdir)
  if jax.process_count() > 1:
    raise ConfigError(f"{flag}={spec} converts in one process; for a multi-process run convert "
                      f"first (pregate-import --hf_dir={hf_dir} --out=DIR), then {flag}=DIR")
  if os.path.isdir(os.path.join(target, "checkpoints")):
    from train.ckpt.checkpointer import Checkpointer
    ckpt = Checkpointer(os.path.join(target, "checkpoints"), read_only=True)
    try:
      meta = ckpt.read_meta(ckpt.resolve("latest"))
    finally:
      ckpt.close()
    source = (meta.imported_from if meta is not None else None) or {}
    now = {f: _sha256(os.path.join(hf_dir, f)) for f in source.get("sha256", {})
           if os.path.exists(os.path.join(hf_dir, f))}
    if source.get("dir") != hf_dir or now != source.get("sha256"):
      raise ConfigError(f"{target} holds an import of {source.get('dir')} that differs from "
                        f"{flag}={spec}; remove {target} or use a new workdir")
    return target
  import_hf(hf_dir, target)
  return target
