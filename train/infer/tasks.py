"""Multiple-choice and cloze tasks scored by log-likelihood, with lm-evaluation-harness's
conventions (0.4.13), so a figure here is the figure the harness gives the same model.

A task file is JSONL, one item per line:
  {"context": str, "choices": [str, ...] (>= 2, non-empty), "gold": int (index into choices)}
with an optional "id"; any other key is refused (a misspelt "gold" must not pass silently). A
cloze task is the same schema, its choices the candidate completions.

Each choice is one request (context, delimiter + choice), delimiter " " by default (the harness's
`target_delimiter`). As the harness's causal models split it: trailing whitespace of the context
moves to the continuation, context ids = encode(context), continuation ids =
encode(context + continuation)[len(context ids):]; an empty context is the end-of-text id. A
request longer than the model's window keeps its last max_len + 1 tokens (the continuation whole).
acc: the gold choice has the largest summed log-likelihood; acc_norm: the largest log-likelihood
per character of the choice (the harness's `len(choice)`, delimiter excluded); a tie goes to the
first choice (numpy argmax); stderr: the sample standard deviation (ddof 1) over sqrt(n).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from core.errors import ConfigError, DataError
from train.ckpt.restore import Restored, default_mesh, load_for_eval
from train.data.tokenizer import Tokenizer
from train.state.sharding import BATCH_AXES, batch_sharding

SCHEMA = ('{"context": str, "choices": [str, ...] (>= 2, non-empty), "gold": int '
          '(index into choices)} and optionally "id" and "delimiter" (str, the same on every '
          'line; default " ")')
_KEYS = {"context", "choices", "gold", "id", "delimiter"}

Request = tuple[list[int], list[int]]  # (context ids, continuation ids)
LogLik = Callable[[list[Request]], list[float]]  # -> summed log-prob of each continuation
LogLikGreedy = Callable[[list[Request]], list[tuple[float, bool]]]  # + greedy match


@dataclasses.dataclass(frozen=True)
class Item:
  context: str
  choices: tuple[str, ...]
  gold: int


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  items: tuple[Item, ...]
  delimiter: str = " "

  @property
  def chance(self) -> float:
    """Expected accuracy of a uniform guess: the mean of 1/len(choices)."""
    return float(np.mean([1.0 / len(i.choices) for i in self.items])) if self.items else 0.0


@dataclasses.dataclass(frozen=True)
class TaskScore:
  name: str
  n: int
  acc: float
  acc_stderr: float
  acc_norm: float
  acc_norm_stderr: float
  chance: float

  def to_dict(self) -> dict[str, float | int | str]:
    return dataclasses.asdict(self)


def _item(obj: Any) -> Item:
  """An item from one parsed line; ValueError names what is wrong with it."""
  if not isinstance(obj, dict):
    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
  missing = sorted({"context", "choices", "gold"} - set(obj))
  if missing:
    raise ValueError(f"missing key(s) {missing}")
  unknown = sorted(set(obj) - _KEYS)
  if unknown:
    raise ValueError(f"unknown key(s) {unknown}")
  context, choices, gold = obj["context"], obj["choices"], obj["gold"]
  if not isinstance(context, str):
    raise ValueError(f"context must be a string, got {type(context).__name__}")
  if (not isinstance(choices, (list, tuple)) or len(choices) < 2
      or not all(isinstance(c, str) and c for c in choices)):
    raise ValueError("choices must be a list of at least 2 non-empty strings")
  if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
    raise ValueError(f"gold must be an integer index in [0, {len(choices)}), got {gold!r}")
  return Item(context, tuple(choices), gold)


def load_task(path: str, name: str | None = None, delimiter: str = " ") -> Task:
  """The task in a JSONL file (its name defaults to the file's stem); a bad line is one
  DataError naming the file, the line number and the problem."""
  name = name or os.path.splitext(os.path.basename(path))[0]
  items, delimiters = [], set()
  try:
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
          items.append(_item(obj))
          delimiters.add(obj.get("delimiter", delimiter))
          if len(delimiters) > 1 or not isinstance(obj.get("delimiter", ""), str):
            raise ValueError(f"delimiter {obj.get('delimiter')!r} differs from the earlier "
                             f"lines' (one task joins every item the same way)")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
          raise DataError(f"task file {path} line {lineno}: {e}; each line must be {SCHEMA}"
                          ) from None
  except UnicodeDecodeError as e:
    raise DataError(f"task file {path} is not UTF-8 text ({e}); write it as UTF-8 JSONL"
                    ) from None
  except OSError as e:
    raise DataError(f"cannot read task file {path} ({e.strerror or e}); pass a JSONL file"
                    ) from None
  if not items:
    raise DataError(f"task file {path} has no items; each line must be {SCHEMA}")
  return Task(name, tuple(items), delimiters.pop())


def write_task(path: str, items: Iterable[Item], delimiter: str = " ") -> None:
  """Write items as a task file `load_task` reads back (each checked as it would be); a
  delimiter other than the default is written on every line."""
  lines = []
  for i, item in enumerate(items):
    obj = {"context": item.context, "choices": list(item.choices), "gold": item.gold}
    if delimiter != " ":
      obj["delimiter"] = delimiter
    try:
      _item(obj)
    except ValueError as e:
      raise DataError(f"item {i} for task file {path}: {e}") from None
    lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(lines)


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Request:
  """(context ids, continuation ids) as the harness's causal models split a request
  (TemplateLM.loglikelihood and _encode_pair). An empty context is the end-of-text id, or,
  with none, the continuation's first token (which is then not scored)."""
  if context == "":
    cont = [int(t) for t in tokenizer.encode(continuation)]
    eos = tokenizer.eos_id
    ctx, cont = ([eos], cont) if eos is not None and cont[:1] != [eos] else (cont[:1], cont[1:])
  else:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
      context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = [int(t) for t in tokenizer.encode(context + continuation)]
    ctx = [int(t) for t in tokenizer.encode(context)]
    cont = whole[len(ctx):]
  if not ctx or not cont:
    raise DataError(f"request context {context[-40:]!r} + continuation {continuation[:40]!r} "
                    "leaves no token to condition on or to score; give each item a context "
                    "and non-empty choices")
  return ctx, cont


def requests(task: Task, tokenizer: Tokenizer) -> list[Request]:
  """Every item's choices as token requests, item by item."""
  return [encode_pair(tokenizer, item.context, task.delimiter + choice)
          for item in task.items for choice in item.choices]


def mean_stderr(values: Sequence[float]) -> float:
  """The harness's `mean_stderr`: sample standard deviation (ddof 1) / sqrt(n); nan below 2
  values (the harness prints N/A)."""
  n = len(values)
  if n < 2:
    return math.nan
  mu = sum(values) / n
  return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def score_logliks(task: Task, lls: Sequence[float]) -> TaskScore:
  """acc and acc_norm from each choice's summed log-likelihood, in `requests` order."""
  acc, acc_norm, at = [], [], 0
  for item in task.items:
    ll = np.asarray(lls[at:at + len(item.choices)], np.float64)
    at += len(item.choices)
    length = np.array([float(len(c)) for c in item.choices])
    acc.append(1.0 if np.argmax(ll) == item.gold else 0.0)
    acc_norm.append(1.0 if np.argmax(ll / length) == item.gold else 0.0)
  return TaskScore(task.name, len(task.items), sum(acc) / len(acc), mean_stderr(acc),
                   sum(acc_norm) / len(acc_norm), mean_stderr(acc_norm), task.chance)


def score(task: Task, tokenizer: Tokenizer, loglik: LogLik) -> TaskScore:
  """The task's accuracy under `loglik` (see the module docstring for the conventions)."""
  return score_logliks(task, loglik(requests(task, tokenizer)))


@functools.partial(jax.jit, static_argnames=("graphdef", "mesh"))
def _rows(graphdef: nnx.GraphDef, params: nnx.State, inputs: jax.Array, targets: jax.Array,
          mask: jax.Array, mesh: jax.sharding.Mesh | None) -> tuple[jax.Array, jax.Array]:
  """Per row: summed log-prob of the masked targets, and whether each is the argmax."""
  logits = nnx.merge(graphdef, params)(inputs).astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  on = mask > 0
  total = jnp.sum(jnp.where(on, picked, 0.0), axis=-1)
  greedy = jnp.all((jnp.argmax(logits, axis=-1) == targets) | ~on, axis=-1)
  if mesh is not None:  # every process reads every row
    total, greedy = (jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P()))
                     for x in (total, greedy))
  return total, greedy


def _window(req: Request, max_len: int) -> tuple[list[int], int]:
  """The tokens one row reads (the last max_len + 1, as HFLM truncates) and how many of its
  targets are the continuation."""
  ctx, cont = req
  if not ctx or not cont:
    raise DataError("a log-likelihood request needs at least one context and one continuation "
                    "token; build requests with tasks.encode_pair")
  if len(cont) > max_len:
    raise DataError(f"a continuation of {len(cont)} tokens exceeds the model's window of "
                    f"{max_len}; shorten the choice")
  return (ctx + cont)[-(max_len + 1):], len(cont)


def make_loglik_greedy(graphdef: nnx.GraphDef, params: nnx.State, max_len: int,
                       batch_size: int, mesh: jax.sharding.Mesh | None = None) -> LogLikGreedy:
  """(summed log-prob, greedy match) per request, batches padded to [batch_size, max_len] (one
  compile per model and shape, shared by every scorer made for it); with `mesh`, the batch
  is split over its batch axes and `params` are expected on that mesh."""
  if batch_size < 1 or max_len < 1:
    raise ConfigError(f"task scoring needs batch_size >= 1 and max_len >= 1, got "
                      f"{batch_size} and {max_len}")
  if mesh is not None:
    ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % ways:
      raise ConfigError(f"task scoring batch_size={batch_size} is not divisible by the mesh's "
                        f"data x fsdp = {ways}; pick a multiple of {ways}")

  def put(a: np.ndarray) -> jax.Array:
    if mesh is None:
      return jnp.asarray(a)
    return jax.make_array_from_callback(a.shape, batch_sharding(mesh), lambda i: a[i])

  def loglik(reqs: list[Request]) -> list[tuple[float, bool]]:
    out: list[tuple[float, bool]] = []
    for start in range(0, len(reqs), batch_size):
      chunk = reqs[start:start + batch_size]
      inputs = np.zeros((batch_size, max_len), np.int32)
      targets = np.zeros((batch_size, max_len), np.int32)
      mask = np.zeros((batch_size, max_len), np.float32)
      for r, req in enumerate(chunk):
        tokens, n_cont = _window(req, max_len)
        n = len(tokens) - 1
        inputs[r, :n], targets[r, :n] = tokens[:-1], tokens[1:]
        mask[r, n - n_cont:n] = 1.0
      total, greedy = jax.device_get(_rows(graphdef, params, put(inputs), put(targets),
                                           put(mask), mesh))
      out += [(float(t), bool(g)) for t, g in zip(total[:len(chunk)], greedy[:len(chunk)])]
    return out

  return loglik


def make_loglik(graphdef: nnx.GraphDef, params: nnx.State, max_len: int, batch_size: int,
                mesh: jax.sharding.Mesh | None = None) -> LogLik:
  """Summed continuation log-prob per request (`make_loglik_greedy` without the match)."""
  scorer = make_loglik_greedy(graphdef, params, max_len, batch_size, mesh)
  return lambda reqs: [ll for ll, _ in scorer(reqs)]


def restore_scorer(path: str, step: str | int = "latest", batch_size: int = 8
                   ) -> tuple[Restored, LogLikGreedy]:
  """A checkpoint through the validated restore, on all local devices, and its scorer (the
  batch rounded up to split evenly over them); the window is the model's max_seq_len."""
  mesh = default_mesh()
  restored = load_for_eval(path, step, mesh=mesh)
  ways = math.prod(mesh.shape[a] for a in BATCH_AXES)
  graphdef, params = nnx.split(restored.model)
  scorer = make_loglik_greedy(graphdef, params, restored.model.cfg.max_seq_len,
                              -(-max(batch_size, 1) // ways) * ways, mesh)
  return restored, scorer


def score_checkpoint(path: str, task_paths: list[str], step: str | int = "latest",
                     batch_size: int = 8) -> list[TaskScore]:
  """Every task file scored on a checkpoint with its own tokenizer (files are read first, so a
  bad one fails before the restore)."""
  tasks = [load_task(p) for p in task_paths]
  restored, scorer = restore_scorer(path, step, batch_size)
  return score_tasks(tasks, restored.tokenizer, scorer)


def score_tasks(tasks: Sequence[Task], tokenizer: Tokenizer, scorer: LogLikGreedy
                ) -> list[TaskScore]:
  return [score_logliks(t, [ll for ll, _ in scorer(requests(t, tokenizer))]) for t in tasks]


def format_scores(scores: Sequence[TaskScore]) -> str:
  """One aligned row per task: n, acc ± stderr, acc_norm ± stderr, chance."""
  def pm(v: float, e: float) -> str:
    return f"{v:.4f} ± {e:.4f}" if not math.isnan(e) else f"{v:.4f} ± n/a"
  rows = [("task", "n", "acc", "acc_norm", "chance")]
  rows += [(s.name, str(s.n), pm(s.acc, s.acc_stderr), pm(s.acc_norm, s.acc_norm_stderr),
            f"{s.chance:.4f}") for s in scores]
  widths = [max(len(r[c]) for r in rows) for c in range(5)]
  return "\n".join("  ".join(v.ljust(w) if c == 0 else v.rjust(w)
                             for c, (v, w) in enumerate(zip(r, widths))).rstrip()
                   for r in rows)
