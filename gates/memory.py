"""Per-device bytes of one training step from the config alone: nothing compiled, no device.

What XLA keeps live at the step's peak, term by term (docs/decisions.md, "The memory model";
within 20% of XLA:CPU's compiled figure over the matrix of tests/test_memory_model.py,
docs/benchmarks.md). Resident: the parameters, AdamW's two moments (param dtype), a teacher's
parameters. The step's peak is the largest of three moments:
- the backward's start: every activation the backward reads, the logits and their gradient,
  the head's gradient (formed first), FSDP's gathered weights;
- a block's backward, when remat is honoured: each block's saved tensors, one block recomputed
  with its cotangents, every gradient (the scan's outputs), that block's gathered weights;
- the update: the gradients and their clipped copy.
Around each, the spike guard's copies of the old moments (kept from the step's start for its
select at the end) cost what the parameter-shaped temporaries do not take over of the moments'
donated buffers. Evaluation and a save's device copy happen at other times: maxima, not sums.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import replace
from typing import Any, Iterator, Mapping

from core.errors import ConfigError
from gates.config_schema import Config
from gates.device_memory import gb as size
from models import attention
from models.config import ModelConfig

AXES = ("data", "fsdp", "tensor")
# train/state/sharding.py DEFAULT_RULES (tests/test_memory_arithmetic.py holds them equal).
RULES = {"vocab": "tensor", "embed": "fsdp", "mlp": "tensor", "heads": "tensor",
         "kv_heads": "tensor"}
POLICIES = ("minimal_with_context", "dots_saveable", "full")  # least recomputation first
F32 = 4
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

Leaf = tuple[tuple[int, ...], tuple[str, ...]]


def _leaves(cfg: ModelConfig) -> tuple[list[Leaf], list[Leaf]]:
  """(one block's parameters, those outside the blocks: the embedding first, then the final
  norm and an untied head), each as (shape, logical axis names), as models/transformer.py
  builds them."""
  d, v, ff = cfg.d_model, cfg.vocab_size, cfg.d_ff
  q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
  block = [((d, q), ("embed", "heads")), ((d, kv), ("embed", "kv_heads")),
           ((d, kv), ("embed", "kv_heads")), ((q, d), ("heads", "embed")), ((d,), ("norm",)),
           ((d,), ("norm",)), ((d, ff), ("embed", "mlp")), ((d, ff), ("embed", "mlp")),
           ((ff, d), ("mlp", "embed"))]
  if cfg.qkv_bias:
    block += [((q,), ("heads",)), ((kv,), ("kv_heads",)), ((kv,), ("kv_heads",))]
  head = [] if cfg.tie_embeddings else [((d, v), ("embed", "vocab"))]
  return block, [((v, d), ("vocab", "embed")), ((d,), ("norm",)), *head]


def leaves(cfg: ModelConfig) -> list[Leaf]:
  """Every parameter of the per-layer layout (scanned layers stack them on an unsplit axis)."""
  block, other = _leaves(cfg)
  return [other[0], *block * cfg.n_layers, *other[1:]]


def per_device(shape: tuple[int, ...], names: tuple[str, ...], mesh: Mapping[str, int],
               axes: tuple[str, ...] = AXES) -> int:
  """Elements of one device's shard: each dimension split by its rule's mesh axis (among
  `axes`) when that axis is larger than 1, divides it and is not used yet (sharding._spec_for)."""
  n, used = 1, set()
  for dim, name in zip(shape, names):
    axis = RULES.get(name)
    if axis in axes and axis not in used and mesh[axis] > 1 and dim % mesh[axis] == 0:
      used.add(axis)
      dim //= mesh[axis]
    n *= dim
  return n


def on_cpu(model_cfg: ModelConfig, platform: str | None) -> bool:
  """Whether the step runs on XLA:CPU, by the one per-platform rule models/config.py keeps
  (scan_layers=None scans on every backend but the CPU), so no JAX call is made here."""
  return not replace(model_cfg, scan_layers=None).layers_scanned(platform)


def resolve_mesh(config: Config, n_devices: int) -> tuple[int, int, int]:
  """The configured mesh over n_devices (one -1 axis takes the devices left over), as
  train.state.sharding.mesh_shape resolves it."""
  sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
  known = sizes[0] * sizes[1] * sizes[2] * (-1 if -1 in sizes else 1)
  if -1 in sizes and n_devices % known == 0:
    sizes[sizes.index(-1)] = n_devices // known
  if sizes[0] * sizes[1] * sizes[2] != n_devices:
    raise ConfigError(f"mesh {dict(zip(AXES, sizes))} does not fill {n_devices} devices; set "
                      f"--config.mesh.* to multiply to {n_devices}")
  return sizes[0], sizes[1], sizes[2]


def eval_microbatches(eval_batch: int, train_micro: int, batch_ways: int) -> int:
  """train/state/step.py's split of an eval batch (no larger than a training microbatch)."""
  for n in range(1, eval_batch + 1):
    size, rest = divmod(eval_batch, n)
    if not rest and size <= train_micro and size % batch_ways == 0:
      return n
  return 1


@dataclasses.dataclass(frozen=True)
class Breakdown:
  """Bytes per device. `params`, `optimizer` and `teacher` stay on the device throughout; the
  step adds the rest at its peak (`phase`); `eval` (its batch and forward) and `save` (the
  stored-layout copy a save of scanned layers makes on the device) come at other times, so
  the total is a maximum over the three. `host_save`: host memory an async save copies the
  state into (not device memory)."""

  params: int
  optimizer: int
  grads: int
  update: int
  accumulator: int
  activations: int
  logits: int
  gathered: int
  spike: int
  batch: int
  teacher: int
  teacher_logits: int
  eval: int
  save: int
  host_save: int
  devices: int
  mesh: tuple[int, int, int]
  phase: str
  how: tuple[tuple[str, str], ...] = ()

  @property
  def resident(self) -> int:
    return self.params + self.optimizer + self.teacher

  @property
  def step(self) -> int:
    return (self.resident + self.grads + self.update + self.accumulator + self.activations
            + self.logits + self.gathered + self.spike + self.batch + self.teacher_logits)

  @property
  def total(self) -> int:
    """The peak per device: the step's, or evaluation's or a save's if either is larger."""
    return max(self.step, self.resident + self.eval, self.resident + self.save)

  def rows(self) -> list[tuple[str, int, str]]:
    """(name, bytes, how it was counted) for every term, the step's first."""
    how = dict(self.how)
    names = ("params", "optimizer", "teacher", "grads", "update", "accumulator", "activations",
             "logits", "gathered", "spike", "batch", "teacher_logits", "eval", "save", "host_save")
    return [(n, getattr(self, n), how.get(n, "")) for n in names]

  def line(self) -> str:
    """One line: the step's terms summed, then the total per device."""
    parts = [f"{n} {size(b)}" for n, b, _ in self.rows()[:12] if b]
    other = "" if self.total == self.step else (
        f" (eval or a save peaks higher: {size(self.total)})")
    return (" + ".join(parts) + f" = {size(self.step)} per device at the {self.phase}{other}, "
            f"mesh data={self.mesh[0]} fsdp={self.mesh[1]} tensor={self.mesh[2]}")


def _tokens(model_cfg: ModelConfig, mesh: Mapping[str, int], seq: int, impl: str
            ) -> dict[str, int]:
  """Per-token widths on one device: tensor splits heads, d_ff and the vocabulary (when it
  divides them); the residual stream is whole on every device."""
  t = mesh["tensor"]
  split = lambda n: n // t if n % t == 0 else n
  heads = split(model_cfg.n_heads)
  return {"d": model_cfg.d_model, "dh": heads * model_cfg.head_dim,
          "dkv": split(model_cfg.n_kv_heads) * model_cfg.head_dim, "ff": split(model_cfg.d_ff),
          "v": split(model_cfg.vocab_size),
          # scores, probabilities and their exp per query; a fused kernel keeps one statistic
          "s": heads if impl == "cudnn" else 3 * heads * seq}


def block_tensors(w: Mapping[str, int], policy: str) -> int:
  """Elements per token a block keeps for the backward (XLA:CPU, measured: docs/decisions.md):
  none = its 6 residual-wide and 4 head-wide tensors, 5 SwiGLU-wide ones and the attention
  scores; the policies keep the input (full), the projections' outputs (dots_saveable), or the
  tensors models/transformer.py names (minimal_with_context)."""
  d, dh, dkv, ff = w["d"], w["dh"], w["dkv"], w["ff"]
  return {"none": 6 * d + 4 * dh + 5 * ff + w["s"], "full": d,
          "dots_saveable": 3 * d + dh + 2 * dkv + 2 * ff,
          "minimal_with_context": 3 * d + 2 * dh + 2 * dkv + 2 * ff}[policy]


def estimate(config: Config, model_cfg: ModelConfig, mesh_shape: tuple[int, int, int],
             teacher_cfg: ModelConfig | None = None, *, platform: str | None = None) -> Breakdown:
  """The per-device peak of a training step of `model_cfg` on the mesh (data, fsdp, tensor),
  on `platform` ('cpu', 'gpu', 'tpu'; None: the backend this process runs, as models/ resolves
  it), which decides scan_layers=None, the attention backend, and XLA:CPU's float32 matmul
  outputs and its scheduling of unrolled remat (see the module docstring)."""
  mesh = dict(zip(AXES, mesh_shape))
  b, L = config.batch, model_cfg.n_layers
  pb = _BYTES[model_cfg.param_dtype]
  cpu = on_cpu(model_cfg, platform)
  cb = F32 if cpu else _BYTES[model_cfg.dtype]  # models/matmul.py emit_dtype
  block, other = _leaves(model_cfg)
  n_params = sum(per_device(s, n, mesh) for s, n in leaves(model_cfg))
  whole = lambda ls: sum(per_device(s, n, mesh, ("tensor",)) for s, n in ls) * pb
  params, moment = n_params * pb, n_params * pb
  window = config.guard.spike_window
  # mu and nu; the step's, AdamW's, the schedule's and the spike history's int32 counts; the
  # history's two float32 rings
  optimizer = 2 * moment + 4 * 4 + 2 * 4 * max(window, 1)
  head = per_device(*other[-1 if not model_cfg.tie_embeddings else 0], mesh, ("tensor",)) * pb
  rows = b.global_batch // (mesh["data"] * mesh["fsdp"])
  micro = rows // b.grad_accum
  n = micro * b.seq_len
  arrays = 4 if config.data.document_masking else 2
  batch = rows * b.seq_len * 4 * arrays
  scanned = model_cfg.layers_scanned(platform)
  w = _tokens(model_cfg, mesh, b.seq_len, attention.resolve(model_cfg, platform))
  policy = model_cfg.remat
  honoured = policy != "none" and (scanned or not cpu)
  kept = block_tensors(w, policy if honoured else "none")
  saved = L * kept + 3 * w["d"]  # + the embedding's output and the final norm's in and out
  distilling = teacher_cfg is not None and bool(config.distill.teacher) and config.distill.alpha
  chunk = model_cfg.loss_chunk if not distilling else 0
  logits = (2 * micro * min(chunk, b.seq_len) * w["v"] * F32 + 2 * n * w["d"] * cb if chunk
            else 2 * n * w["v"] * F32)
  fsdp = mesh["fsdp"] > 1
  accum = moment if b.grad_accum > 1 else 0
  teacher = teacher_gathered = teacher_logits = 0
  if teacher_cfg is not None and config.distill.teacher:
    tpb = _BYTES[teacher_cfg.param_dtype]
    teacher = sum(per_device(s, nm, mesh) for s, nm in leaves(teacher_cfg)) * tpb
    if distilling:
      teacher_logits = 4 * n * w["v"] * F32
      if fsdp and b.grad_accum > 1:  # gathered once, outside the microbatch loop
        teacher_gathered = sum(per_device(s, nm, mesh, ("tensor",))
                               for s, nm in leaves(teacher_cfg)) * tpb
  spike = lambda taken: max(0, 2 * moment - taken) if window else 0
  gathered_start = (whole(leaves(model_cfg)) if not scanned else head) if fsdp else 0
  none = {"grads": 0, "update": 0, "accumulator": accum, "activations": 0, "logits": 0,
          "gathered": teacher_gathered, "spike": 0, "teacher_logits": 0}
  phases = {"backward's start": {
      **none, "grads": head, "activations": n * saved * cb, "logits": logits,
      "gathered": gathered_start + teacher_gathered, "spike": spike(head + accum) // 2,
      "teacher_logits": teacher_logits}}
  if honoured:
    recomputed = block_tensors(w, "none") + 2 * w["ff"] + w["d"]  # + the cotangents
    phases["block backward"] = {
        **none, "grads": moment + head, "activations": n * (saved - kept + recomputed) * cb,
        "gathered": (whole(block) if fsdp else 0) + teacher_gathered,
        "spike": spike(moment + head + accum)}
  phases["update"] = {**none, "grads": moment, "update": moment, "accumulator": 0,
                      "gathered": 0, "spike": spike(2 * moment)}
  phase, terms = max(phases.items(), key=lambda kv: sum(kv[1].values()))
  eval_rows = (config.eval.batch_size or b.global_batch) // (mesh["data"] * mesh["fsdp"])
  splits = eval_microbatches(config.eval.batch_size or b.global_batch, b.global_batch //
                             b.grad_accum, mesh["data"] * mesh["fsdp"])
  eval_n = eval_rows // splits * b.seq_len
  eval_gathered = 0 if not fsdp else whole(leaves(model_cfg)) if splits > 1 else \
      head + whole(block)
  evaluation = eval_n * (w["v"] * F32 + w["d"] * cb) + eval_gathered + eval_rows * \
      b.seq_len * 8
  return Breakdown(
      params=params, optimizer=optimizer, batch=batch, teacher=teacher,
      eval=evaluation, save=params + optimizer if scanned else 0, host_save=params + optimizer,
      devices=mesh["data"] * mesh["fsdp"] * mesh["tensor"], mesh=mesh_shape, phase=phase,
      how=_how(model_cfg, mesh, L, n, policy, honoured, scanned, chunk, phase), **terms)


def _how(cfg: ModelConfig, mesh: Mapping[str, int], layers: int, n: int, policy: str,
         honoured: bool, scanned: bool, chunk: int, phase: str) -> tuple[tuple[str, str], ...]:
  shard = f"/ fsdp {mesh['fsdp']} x tensor {mesh['tensor']} where they split it"
  kept = policy if honoured else "none" + ("" if policy == "none" else
                                           f" ({policy} not honoured unrolled on XLA:CPU)")
  grads = {"backward's start": "the head's gradient (formed first, whole over fsdp)",
           "block backward": f"every gradient {shard}, and the head's whole",
           "update": f"every gradient {shard}"}[phase]
  return (("params", f"N x {cfg.param_dtype} {shard}"),
          ("optimizer", "AdamW mu + nu in the param dtype, the step counts, spike history"),
          ("grads", f"{grads}, in the param dtype"),
          ("update", "the clipped gradients AdamW reads"),
          ("accumulator", "grad_accum's running sum of the microbatches' gradients"),
          ("activations", f"{n} tokens x {layers} blocks, remat {kept}, "
                          f"{'scanned' if scanned else 'unrolled'}"
                          + (", one block recomputed" if phase == "block backward" else "")),
          ("logits", "float32 logits and their gradient"
                     + (f", {chunk}-position tiles" if chunk else "")),
          ("gathered", "weights all-gathered over fsdp" if mesh["fsdp"] > 1 else ""),
          ("spike", "old moments kept for the spike select, less the buffers others reuse"),
          ("batch", "int32 inputs and targets (+ document arrays)"),
          ("teacher", "the teacher's parameters, sharded like the student's"),
          ("teacher_logits", "teacher logits, both log-softmaxes for the KL"),
          ("eval", "eval microbatch's logits and batch, at another time"),
          ("save", "the stored-layout copy of a scanned state, at save time"),
          ("host_save", "host memory: an async save copies the state off the device"))


def format_overrides(overrides: Mapping[str, Any]) -> str:
  """{'model.remat': 'full'} -> '--config.model.remat=full'."""
  return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


def _with(config: Config, model_cfg: ModelConfig, overrides: Mapping[str, Any]
          ) -> tuple[Config, ModelConfig]:
  sections: dict[str, dict[str, Any]] = {}
  for path, value in overrides.items():
    section, name = path.split(".")
    sections.setdefault(section, {})[name] = value
  model_cfg = replace(model_cfg, **sections.pop("model", {}))
  return replace(config, **{s: replace(getattr(config, s), **v)
                                        for s, v in sections.items()}), model_cfg


def _options(config: Config, model_cfg: ModelConfig, n_devices: int, platform: str | None
             ) -> list[list[dict[str, Any]]]:
  """Per knob, the changes that lower memory: remat policies (least recomputation first; on
  XLA:CPU with the layers scanned, where it is honoured), larger grad_accum with the same
  global batch, larger fsdp over the same devices."""
  data, fsdp, tensor = resolve_mesh(config, n_devices)
  scan = {"model.scan_layers": True} if on_cpu(model_cfg, platform) and not \
      model_cfg.layers_scanned(platform) else {}
  remat = [{"model.remat": p, **scan} for p in POLICIES if p != model_cfg.remat]
  g, ways = config.batch.global_batch, data * fsdp
  accum = [{"batch.grad_accum": k} for k in range(config.batch.grad_accum + 1, g + 1)
           if g % k == 0 and (g // k) % ways == 0]
  shards = [{"mesh.fsdp": f, "mesh.data": n_devices // (f * tensor)}
            for f in range(fsdp + 1, n_devices // tensor + 1) if (n_devices // tensor) % f == 0]
  return [remat, accum, shards]


def _candidates(config: Config, model_cfg: ModelConfig, n_devices: int,
                teacher_cfg: ModelConfig | None, platform: str | None
                ) -> Iterator[tuple[dict[str, Any], Breakdown]]:
  """Every combination of the knobs' changes with its estimate, cheapest first: one knob
  before two before three, each knob's least costly setting first (remat, then grad_accum,
  then fsdp)."""
  knobs = _options(config, model_cfg, n_devices, platform)
  for k in range(1, 4):
    for chosen in itertools.combinations(range(3), k):
      for combo in itertools.product(*(knobs[i] for i in chosen)):
        overrides = {key: v for part in combo for key, v in part.items()}
        c, m = _with(config, model_cfg, overrides)
        yield overrides, estimate(c, m, resolve_mesh(c, n_devices), teacher_cfg,
                                  platform=platform)


def fixes(config: Config, model_cfg: ModelConfig, n_devices: int, capacity_bytes: int,
          teacher_cfg: ModelConfig | None = None, *, platform: str | None = None
          ) -> list[tuple[dict[str, Any], Breakdown]]:
  """The overrides (dotted --config paths) with which the step fits `capacity_bytes` per
  device, cheapest first (`_candidates`). Empty: nothing fits; `no_fix_text` says why."""
  return [(o, est) for o, est in _candidates(config, model_cfg, n_devices, teacher_cfg,
                                             platform) if est.total <= capacity_bytes]


def fix_text(config: Config, model_cfg: ModelConfig, n_devices: int, capacity_bytes: int,
             teacher_cfg: ModelConfig | None = None, *, platform: str | None = None,
             scale: float = 1.0) -> str:
  """The cheapest fix as --config overrides with its estimate, or (none fits) `no_fix_text`.
  `scale` calibrates the estimate to a compiled figure (compiled / estimated bytes of the
  configured step): the fix is then judged against what XLA will assign."""
  budget = int(capacity_bytes / scale)
  found = fixes(config, model_cfg, n_devices, budget, teacher_cfg, platform=platform)
  if not found:
    return no_fix_text(config, model_cfg, n_devices, budget, teacher_cfg, platform=platform)
  overrides, best = found[0]
  return (f"{format_overrides(overrides)} (estimated {size(best.total * scale)} per device; "
          f"cheapest of {len(found)} that fit)")


def no_fix_text(config: Config, model_cfg: ModelConfig, n_devices: int, capacity_bytes: int,
                  teacher_cfg: ModelConfig | None = None, *, platform: str | None = None) -> str:
  """The arithmetic against capacity: what the parameters, AdamW's moments and the update's
  gradients take alone with fsdp over every device, and the lightest setting's breakdown."""
  mesh = resolve_mesh(config, n_devices)
  now = estimate(config, model_cfg, mesh, teacher_cfg, platform=platform)
  overrides, best = min(itertools.chain(
      [({}, now)], _candidates(config, model_cfg, n_devices, teacher_cfg, platform)),
      key=lambda item: item[1].total)
  widest = (1, n_devices // mesh[2], mesh[2])
  state = estimate(config, model_cfg, widest, teacher_cfg, platform=platform)
  floor = state.resident + 2 * state.params
  cap = size(capacity_bytes)
  if floor > capacity_bytes:
    return (f"nothing fits {cap} per device: the parameters, AdamW's two moments and the "
            f"update's gradients and clipped copy alone take {size(floor)} per device "
            f"even with fsdp={widest[1]} (5 x {size(state.params)} of "
            f"{model_cfg.param_dtype} parameters per device"
            + (f", + the teacher's {size(state.teacher)}" if state.teacher else "") + ")")
  return (f"nothing fits {cap} per device; the lightest setting "
          f"({format_overrides(overrides) or 'as configured'}) needs {size(best.total)}: "
          f"{best.line()}")
