"""The frozen teacher of a distillation run: `distill.teacher` (or `--teacher`) = PATH[:STEP], a
pregate run's workdir or checkpoints dir (relative paths resolve against the repo root, as every
config path does), or hf:DIR (converted once into WORKDIR/hf_teacher, as `--init=hf:DIR` is).

Each moment refuses with one line (TeacherError, exit 2):
- `check_files` (preflight: files only, nothing compiled or written): the checkpoint and step
  exist, the metadata is readable and describes a model, the teacher's vocabulary equals the
  student's model.vocab_size, its tokenizer (fingerprint) equals the run's, its context covers
  batch.seq_len, and a workdir being resumed was distilled from this very teacher.
- `load` (the loop, before the step compiles): the restore of `load_for_eval` (architecture,
  stored signature, functional fingerprint) onto the run's mesh, the same checks against the
  prepared data's own tokenizer, and the workdir's recorded teacher again.
- `check_resumed` (once the resume has picked its checkpoint): the teacher recorded there is the
  one loaded now. A teacher is identified by content: its step, architecture, functional
  fingerprint and tokenizer fingerprint (the path is recorded, and may be spelled differently).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Mapping

import jax

from core.errors import ConfigError, DataError, PregateError
from core.paths import REPO_ROOT, resolve_path
from gates import arch_match
from models.config import ModelConfig
from train.ckpt import metadata
from train.ckpt.stepspec import checkpoint_dir, resolve_on_disk, split_path_step
from train.data.tokenizer import Tokenizer, tokenizer_from_json
from train.hf import importer, tokenizer_json
from train.state import flops
from train.state.distill import Teacher

HF = importer.INIT_PREFIX
_FINGERPRINT_KEYS = ("probe", "dtype", "target_logp", "max_logp")


class TeacherError(ConfigError):
  """A teacher that cannot teach this student, or not the one a resumed run was trained with."""


def _where(spec: str) -> tuple[str, str | int]:
  """(absolute PATH, step) of a spec; hf:DIR -> (DIR, 'latest')."""
  if spec.startswith(HF):
    return resolve_path(spec[len(HF):]), "latest"
  path, step = split_path_step(spec)
  return resolve_path(path), step


def _missing(spec: str, path: str) -> TeacherError:
  """No teacher at `path`: name the command that trains it when a config of the workdir's name
  exists (runs/shakespeare_char <- configs/shakespeare_char.py)."""
  config = os.path.join("configs", f"{os.path.basename(os.path.normpath(path))}.py")
  given = split_path_step(spec)[0]
  workdir = given if not os.path.isabs(given) else path
  how = (f"train it first, from {REPO_ROOT}: python -m train.main --config={config} "
         f"--workdir={workdir}"
         if os.path.isfile(os.path.join(REPO_ROOT, config)) and not spec.startswith(HF) else
         "train or import the teacher there first")
  return TeacherError(f"distill.teacher={spec}: no such directory {path}; {how}. Or pass "
                      f"--teacher=PATH[:STEP] (a pregate run's workdir) or hf:DIR")


def _read(spec: str) -> tuple[str, ModelConfig, Any, str, int, metadata.Metadata | None]:
  """From files: (source for messages, model config, tokenizer JSON, checkpoints dir, step,
  metadata); an hf:DIR gives its config.json's model and tokenizer.json (no dir, step or
  metadata: those exist once converted)."""
  path, step = _where(spec)
  if not os.path.isdir(path):
    raise _missing(spec, path)
  try:
    if spec.startswith(HF):
      return (f"distill.teacher={spec}", importer.check(path),
              tokenizer_json.read(path).to_json(), "", 0, None)
    directory = checkpoint_dir(path)
    resolved = resolve_on_disk(directory, step)
    meta = metadata.require(metadata.read(directory, resolved), f"{directory}/{resolved}")
  except PregateError as e:
    raise TeacherError(f"distill.teacher={spec}: {e}") from None
  source = f"distill.teacher={spec}: checkpoint {directory}/{resolved}"
  try:
    model_cfg = ModelConfig.from_dict(dict(meta.model))
  except (ConfigError, TypeError, AttributeError, ValueError) as e:
    raise TeacherError(f"{source}: its metadata's model config is unusable ({e}); use an "
                       f"intact checkpoint") from None
  return source, model_cfg, meta.tokenizer, directory, resolved, meta


def _tokenizer(tok_json: Any) -> Tokenizer | None:
  try:
    return tokenizer_from_json(tok_json)
  except DataError:
    return None


def check_compatible(source: str, teacher: ModelConfig, teacher_tok: Any, student: ModelConfig,
                     seq_len: int, run_tok: Mapping[str, Any] | None) -> None:
  """Refuse a teacher whose vocabulary, tokenizer or context differs from the student's (one
  line listing every difference). `run_tok` None: the run's tokenizer is not known yet (the
  loop checks again once the data is prepared)."""
  problems = []
  if teacher.vocab_size != student.vocab_size:
    problems.append(f"its vocabulary has {teacher.vocab_size} ids but the student's "
                    f"model.vocab_size={student.vocab_size}")
  tok = _tokenizer(teacher_tok)
  if tok is None:
    problems.append("its metadata holds no usable tokenizer")
  elif run_tok is not None:
    mine = _tokenizer(dict(run_tok))
    if mine is None or tok.fingerprint() != mine.fingerprint():
      diffs = arch_match.tokenizer_differences(run_tok, teacher_tok) or ["tokenizer differs"]
      problems.append(f"{'; '.join(diffs)} (fingerprint {tok.fingerprint()[:12]}, the run's "
                      f"{mine.fingerprint()[:12] if mine else '<unusable>'})")
  if teacher.max_seq_len < seq_len:
    problems.append(f"its max_seq_len={teacher.max_seq_len} is shorter than batch.seq_len="
                    f"{seq_len}")
  if problems:
    raise TeacherError(f"{source} cannot teach this run: " + "; ".join(problems) + ". Use a "
                       "teacher trained with the student's tokenizer and vocabulary")


def _digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
                        ).hexdigest()


def identity(spec: str, directory: str, step: int, meta: metadata.Metadata) -> dict[str, Any]:
  """The teacher as checkpoint metadata records it (`distill.teacher`); a resume compares all
  but spec and path."""
  fp, tok = meta.fingerprint, _tokenizer(meta.tokenizer)
  return {"spec": spec, "path": directory, "step": int(step),
          "architecture": meta.architecture, "model": meta.model,
          "param_counts": meta.param_counts,
          "fingerprint_sha256": _digest({k: fp.get(k) for k in _FINGERPRINT_KEYS})
          if isinstance(fp, dict) else None,
          "tokenizer_fingerprint": tok.fingerprint() if tok is not None else None}


def check_files(spec: str, student: ModelConfig, seq_len: int,
                run_tokenizer: Callable[[], Mapping[str, Any] | None], workdir: str) -> None:
  """The preflight's teacher check: every refusal the teacher's files can give, and for a
  pregate checkpoint the workdir's recorded teacher (a resume of another teacher's run)."""
  source, model_cfg, tok, directory, step, meta = _read(spec)
  check_compatible(source, model_cfg, tok, student, seq_len, run_tokenizer())
  if meta is not None:
    check_workdir(workdir, {"teacher": identity(spec, directory, step, meta)})


def model_config(spec: str) -> dict[str, Any]:
  """The teacher's model config from its files (the planner's teacher FLOPs)."""
  return _read(spec)[1].to_dict()


def load(config: Any, student: ModelConfig, workdir: str, tokenizer: Tokenizer, mesh: Any
         ) -> Teacher | None:
  """The configured teacher (None without one), restored and verified like `load_for_eval`
  onto the run's `mesh` (its own sharding rules), checked against the run's tokenizer."""
  spec = str(config.distill.teacher)
  if not spec:
    return None
  from flax import nnx

  from models.params import count_params
  from train.ckpt.restore import load_for_eval
  from train.state import step as step_lib
  path, step = _where(spec)
  if not os.path.isdir(path):
    raise _missing(spec, path)
  try:
    if spec.startswith(HF):  # converted once, then a pregate checkpoint like any other
      path = importer.init_from_hf(HF + path, workdir, "hf_teacher", "--teacher")
    restored = load_for_eval(path, step, mesh)
    directory = checkpoint_dir(path)
  except arch_match.FingerprintMismatchError as e:  # keeps its class: metadata that lies
    raise arch_match.FingerprintMismatchError(f"distill.teacher={spec}", str(e)) from None
  except PregateError as e:
    raise TeacherError(f"distill.teacher={spec}: {e}") from None
  t_cfg = restored.model.cfg
  check_compatible(f"distill.teacher={spec}: checkpoint {directory}/{restored.step}", t_cfg,
                   restored.meta.tokenizer, student, config.batch.seq_len,
                   tokenizer.to_json())
  graphdef = step_lib.stored_graphdef(t_cfg)
  params = nnx.to_pure_dict(nnx.state(restored.model))
  return Teacher(t_cfg, graphdef, params, count_params(t_cfg).total,
                 identity(spec, directory, restored.step, restored.meta))


def run_record(config: Any, teacher: Teacher | None) -> dict[str, Any] | None:
  """The `distill` entry of the run's checkpoint metadata (None: not distilled)."""
  if teacher is None:
    return None
  return {"teacher": teacher.record, "alpha": float(config.distill.alpha),
          "temperature": float(config.distill.temperature)}


def _short(x: Any) -> str:
  return f"{x[:12]}..." if isinstance(x, str) and len(x) > 16 else repr(x)


def differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any] | None
                ) -> list[str]:
  """How the teacher a checkpoint records differs from the current one (empty: the same)."""
  r, c = (recorded or {}).get("teacher"), (current or {}).get("teacher")
  if r is None and c is None:
    return []
  if r is None:
    return [f"it was trained without a teacher, now distill.teacher={c['spec']}"]
  if c is None:
    return [f"it was distilled from {r.get('spec')} (step {r.get('step')}), now without one"]
  out = [f"teacher {what} {_short(r.get(key))} -> {_short(c.get(key))}"
         for key, what in (("step", "step"), ("fingerprint_sha256", "functional fingerprint"),
                           ("tokenizer_fingerprint", "tokenizer fingerprint"))
         if r.get(key) != c.get(key)]
  if isinstance(r.get("model"), Mapping):
    out += [f"teacher {d}" for d in arch_match.config_differences(r["model"], c["model"])]
  else:
    out.append("teacher model: the recorded one is unreadable")
  return out


def check_resumed(source: str, recorded_meta: metadata.Metadata | None,
                  current: Mapping[str, Any] | None) -> None:
  """Refuse resuming a checkpoint distilled from another teacher (or from none)."""
  if recorded_meta is None:
    return
  diffs = differences(recorded_meta.distill, current)
  if diffs:
    r = (recorded_meta.distill or {}).get("teacher") or {}
    own = f" ({r.get('path')} step {r.get('step')})" if r else " (none: distill.teacher='')"
    raise TeacherError(f"{source} was trained with another teacher: " + "; ".join(diffs) +
                       f". Resume it with the teacher it was trained with{own}, or use a new "
                       f"--workdir")


def check_workdir(workdir: str, current: Mapping[str, Any] | None) -> None:
  """From files, before compiling: the newest checkpoint with readable metadata (the one a
  resume tries first) records the same teacher as `current`."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return
  for step in sorted((int(n) for n in os.listdir(directory) if n.isdigit()), reverse=True):
    try:
      meta = metadata.read(directory, step)
    except PregateError:
      continue  # damaged: the resume skips it too
    if meta is not None:
      check_resumed(f"--workdir={workdir}: checkpoint {directory}/{step}", meta, current)
      return


def forward_flops_per_token(teacher: Teacher | None, config: Any) -> float:
  """The teacher's forward FLOPs per trained token (0 without one, or at alpha = 0, where its
  forward does not run)."""
  if teacher is None or not config.distill.alpha:
    return 0.0
  return flops.forward_flops_per_token(teacher.model_cfg, teacher.n_params, config.batch.seq_len)


def start_line(teacher: Teacher, config: Any, student_flops_per_token: float) -> str:
  """The start-up report: which teacher, its memory and its forward's FLOPs."""
  r, cfg, b = teacher.record, teacher.model_cfg, config.batch
  fwd = flops.forward_flops_per_token(cfg, teacher.n_params, b.seq_len)
  per_device = sum(x.addressable_shards[0].data.nbytes
                   for x in jax.tree.leaves(teacher.params))
  alpha = float(config.distill.alpha)
  off = "; alpha 0: ordinary training, the teacher's forward does not run" if not alpha else ""
  return (f"distill: teacher {r['path']}/{r['step']} ({cfg.family}, N = {teacher.n_params:,}, "
          f"{cfg.dtype} compute), parameters {teacher.param_bytes() / 2**20:.2f} MiB "
          f"({per_device / 2**20:.2f} MiB per device), frozen; forward {fwd:,.0f} FLOPs/token "
          f"= {fwd * b.global_batch * b.seq_len / 1e9:.3g} GFLOP/step, +"
          f"{100 * fwd / student_flops_per_token:.1f}% over the student's training FLOPs; "
          f"alpha {alpha:g}, temperature {float(config.distill.temperature):g}{off}")
