"""`pregate-ship WORKDIR --contract=ship.yaml [--step=latest|best|N]`: may this run ship?

Measures a run's checkpoint and judges each fact against a ship contract (gates/ship.py), in
order: the gate verdict, validation loss and bits per byte (re-measured on the recorded eval
batches), task accuracies (the run's task files; `smoke` is WORKDIR/tasks/smoke.jsonl, or drawn
afresh from the validation split), the fingerprint (the validated restore), an export round
trip through transformers, a generation smoke test and an install check in a fresh
interpreter. Prints one table and GO / WARN / NO-GO, exits 0 / 10 / 11, and writes
WORKDIR/ship.json (atomically), which an export's model card then states.
"""
from __future__ import annotations

import datetime
import math
import os
import shutil
import tempfile
from typing import Any

from absl import flags

from core import cli

FLAGS = flags.FLAGS
SAMPLE_TEMPERATURE = 1.0  # the model's own distribution: what distinct-2 judges


def _define_flags() -> None:
  flags.DEFINE_string("contract", None, "The ship contract (YAML), e.g. "
                      "configs/ship_shakespeare_char.yaml.")
  flags.mark_flag_as_required("contract")
  flags.DEFINE_string("step", None, "Checkpoint step: latest, best or a number (default: the "
                      "contract's `step`, else latest).")


def _line(err: BaseException) -> str:
  return f"{type(err).__name__}: {' '.join(str(err).split())}"


class _Facts:
  """The checkpoint restored once through the validated path, and what is measured on it."""

  def __init__(self, workdir: str, step: str | int):
    from train.ckpt import stepspec
    self.ckpt_dir = stepspec.checkpoint_dir(workdir)  # WORKDIR or WORKDIR/checkpoints
    self.workdir = os.path.dirname(self.ckpt_dir)
    self.step = stepspec.resolve_on_disk(self.ckpt_dir, step)
    self.restored: Any = None
    self.windows: list[str] = []  # validation passages: prompts and round-trip text

  def meta(self) -> Any:
    from train.ckpt import metadata
    return metadata.read(self.ckpt_dir, self.step)

  def restore(self) -> float | None:
    """The validated restore (metadata, signature, tokenizer, fingerprint); -> the fingerprint
    difference (None: none recorded). Raises as every load path does."""
    from flax import nnx

    from train.ckpt.checkpointer import Checkpointer
    from train.ckpt.restore import Restored, default_mesh, restore_verified
    ckpt = Checkpointer(self.ckpt_dir, read_only=True)
    try:
      got = restore_verified(ckpt, self.step, source=f"checkpoint {self.ckpt_dir}/{self.step}",
                             mesh=default_mesh(), need_tokenizer=True)
    finally:
      ckpt.close()
    model = nnx.merge(got.setup.stored_graphdef, got.items["params"])
    self.restored = Restored(model, got.meta, got.tokenizer, self.step)
    return got.fingerprint_difference

  def val(self) -> Any:
    from train.data import pipeline
    from train.infer import score
    meta = self.restored.meta
    split = (meta.eval_batches or {}).get("split", "val")
    return pipeline.open_split(score.val_dir(meta, self.ckpt_dir), split)

  def val_figures(self) -> tuple[float, float]:
    """(val loss, val bits per byte) on the checkpoint's recorded eval batches."""
    import jax
    import numpy as np

    from core.errors import DataError
    from train.data import pipeline
    from train.infer import score
    meta, model, tok = self.restored.meta, self.restored.model, self.restored.tokenizer
    if not meta.eval_batches:
      raise DataError(f"checkpoint step {self.step} records no eval batches")
    drawn = pipeline.reproduce_eval_batches(self.val(), dict(meta.eval_batches))
    eval_fn = score.make_eval_fn(model)
    outs = jax.device_get([eval_fn({**b, "mask": np.ones(b["targets"].shape, np.float32)})
                           for b in drawn])
    means, counts = zip(*outs)
    table = tok.token_bytes()
    n_bytes = sum(int(table[b["targets"]].sum()) for b in drawn)
    nats = float(np.dot(np.float64(means), np.float64(counts)))
    return float(np.mean(means)), nats / max(n_bytes, 1) / math.log(2)

  def task(self, name: str, path: str) -> Any:
    """The task a target names: its `path`, the run's eval.tasks file of that name, or the
    smoke task (the run's WORKDIR/tasks/smoke.jsonl, else drawn from the validation split)."""
    from core.errors import DataError
    from core.paths import resolve_path
    from gates import config_sanity
    from train.infer import tasks
    from train.run import tasks_edge
    if path:
      return tasks.load_task(resolve_path(path), name)
    spec = ((self.restored.meta.config or {}).get("eval") or {}).get("tasks", "")
    found = dict(config_sanity.task_names(spec)).get(name)
    if found and found != tasks_edge.SMOKE:
      return tasks.load_task(resolve_path(found), name)
    if name != tasks_edge.SMOKE:
      raise DataError(f"task {name!r} is not among the run's eval.tasks ({spec!r}); give the "
                      f"target a `path`")
    smoke = tasks_edge.smoke_path(self.workdir)
    if os.path.isfile(smoke):
      return tasks_edge.load_smoke(smoke)
    return tasks_edge.build_smoke(self.val(), self.restored.tokenizer,
                                  self.restored.model.cfg.max_seq_len)

  def task_score(self, task: Any, metric: str) -> float:
    from flax import nnx

    from train.ckpt.restore import default_mesh
    from train.infer import tasks
    model = self.restored.model
    mesh = default_mesh()
    ways = math.prod(mesh.shape[a] for a in ("data", "fsdp"))
    graphdef, params = nnx.split(model)
    loglik = tasks.make_loglik(graphdef, params, model.cfg.max_seq_len, 8 * ways, mesh)
    return getattr(tasks.score(task, self.restored.tokenizer, loglik), metric)

  def passages(self, n: int) -> list[str]:
    """`n` validation passages of the model's context (the smoke task's items, whole)."""
    if len(self.windows) < n:
      task = self.task("smoke", "")
      self.windows = [i.context + task.delimiter + i.choices[i.gold] for i in task.items]
    return self.windows[:n]


def _targets(f: _Facts, contract: Any, ship: Any, ok: bool) -> list[Any]:
  rows = []
  figures: dict[str, float] = {}
  if any(t.task is None for t in contract.targets) and ok:
    try:
      figures["val_loss"], figures["val_bpb"] = f.val_figures()
    except Exception as e:  # the row reports it
      figures["error"] = _line(e)  # type: ignore[assignment]
  for t in contract.targets:
    if not ok:
      rows.append(ship.skipped(t.name, "not measured: the checkpoint failed validation"))
      continue
    if t.task is None:
      rows.append(ship.target_row(t, figures.get(t.name), str(figures.get("error", ""))))
      continue
    try:
      value = f.task_score(f.task(t.task, t.path), t.name.split(":")[2])
      rows.append(ship.target_row(t, value))
    except Exception as e:
      rows.append(ship.target_row(t, None, _line(e)))
  return rows


def _export_rows(f: _Facts, contract: Any, ship: Any) -> list[Any]:
  """The export round trip, generation and install rows (the checkpoint restored)."""
  from train.hf import roundtrip
  from train.hf.export import export
  model, tok = f.restored.model, f.restored.tokenizer
  try:
    texts = f.passages(max(contract.export_windows, contract.prompts))
  except Exception as e:  # e.g. a validation split too short for passages
    return [ship.skipped(c, f"no validation passages: {_line(e)}") for c in _LATER]
  rows = []
  tmp = tempfile.mkdtemp(prefix="pregate-ship-")
  hf_dir = os.path.join(tmp, "hf")
  try:
    try:
      export(f.workdir, hf_dir, step=f.step)
      diff, positions, same = roundtrip.logits_check(model, tok, hf_dir,
                                                     texts[:contract.export_windows])
      rows.append(ship.export_row(diff, positions, contract.export_tolerance, same))
    except ImportError as e:
      rows.append(ship.skipped(_LATER[0], f"transformers/torch not installed ({e}); "
                                          "pip install -e '.[hf]'"))
    except Exception as e:
      rows.append(ship.export_row(None, 0, contract.export_tolerance, None, _line(e)))
    if contract.generation:
      rows.append(_generation(f, contract, ship, texts[:contract.prompts]))
    exported = os.path.isfile(os.path.join(hf_dir, "config.json"))
    if contract.install and not exported:
      rows.append(ship.skipped(_LATER[2], "no export to install"))
    elif contract.install:
      rows.append(ship.install_row(*roundtrip.install_check(
          model, tok, hf_dir, texts[0], contract.export_tolerance)))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return rows


def _generation(f: _Facts, contract: Any, ship: Any, texts: list[str]) -> Any:
  """Greedy and sampled continuations of validation prompts (half the context each)."""
  from train.infer.generate import generate_samples
  model, tok = f.restored.model, f.restored.tokenizer
  greedy: list[list[int]] = []
  sampled: list[list[int]] = []
  try:
    for i, text in enumerate(texts):
      prompt = text[-max(1, model.cfg.max_seq_len // 2):]
      for temperature, out in ((0.0, greedy), (SAMPLE_TEMPERATURE, sampled)):
        made = generate_samples(model, tok, prompt, contract.new_tokens,
                                temperature=temperature, seed=i)[0]
        out.append([int(t) for t in tok.encode(made)])
  except Exception as e:
    return ship.generation_row([], [], contract.min_distinct_2, _line(e))
  return ship.generation_row(greedy, sampled, contract.min_distinct_2)


_LATER = ("export round trip", "generation", "install")


def evaluate(workdir: str, contract: Any, step: str | int) -> tuple[list[Any], _Facts]:
  """Every row, in the contract's order (gates/ship.py)."""
  from core.errors import PregateError
  from gates import ship
  f = _Facts(workdir, step)
  try:
    meta = f.meta()
  except PregateError:  # torn metadata: the restore below says so, at the fingerprint row
    meta = None
  rows = [ship.gate_row(meta.gate if meta is not None else None, contract.bypassed_gate)]
  try:
    fp = ship.fingerprint_row(f.restore())
  except Exception as e:  # lying metadata, damaged arrays: NO-GO here
    fp = ship.fingerprint_row(None, _line(e))
  ok = f.restored is not None
  rows += _targets(f, contract, ship, ok)
  rows.append(fp)
  later = _export_rows(f, contract, ship) if ok else [
      ship.skipped(c, "not run: the checkpoint failed validation") for c in _LATER]
  off = {c for c, on in zip(_LATER[1:], (contract.generation, contract.install)) if not on}
  return rows + [r for r in later if r.check not in off], f


def table(rows: list[Any]) -> str:
  width = max(len(r.check) for r in rows)
  lines = [f"{'check':<{width}}  status  detail"]
  lines += [f"{r.check:<{width}}  {r.status:<6}  {r.detail}" for r in rows]
  return "\n".join(lines)


def ship(workdir: str, contract_path: str, step: str | int | None = None) -> tuple[int, str]:
  """Judge the run in `workdir` against the contract file; write WORKDIR/ship.json; -> (exit
  code, the report: a header, the table, the verdict)."""
  from core import contracts
  from core.jsonio import write_json_atomic
  from gates import ship as ship_lib
  from train.hf.export import SHIP_JSON
  contract = ship_lib.parse(contracts.read_yaml(contract_path, "ship contract"))
  rows, f = evaluate(workdir, contract, contract.step if step is None else step)
  verdict = ship_lib.verdict(rows)
  report = (f"pregate-ship {f.workdir}: checkpoint step {f.step} against {contract.name} "
            f"v{contract.version} ({contract_path})\n{table(rows)}\nverdict: {verdict}")
  write_json_atomic(os.path.join(f.workdir, SHIP_JSON), {
      "verdict": verdict, "exit_code": ship_lib.EXIT_CODES[verdict], "step": f.step,
      "checkpoint": f.ckpt_dir, "contract": {"name": contract.name,
                                             "version": contract.version,
                                             "path": os.path.abspath(contract_path)},
      "time": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "rows": [r.to_dict() for r in rows]})
  return ship_lib.EXIT_CODES[verdict], report


def main(argv: list[str]) -> int:
  code, report = ship(argv[0], FLAGS.contract, FLAGS.step)
  print(report, flush=True)
  return code


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags, positional=("workdir",),
                  usage="pregate-ship WORKDIR --contract=ship.yaml [--step=latest|best|N]")


if __name__ == "__main__":
  run()
