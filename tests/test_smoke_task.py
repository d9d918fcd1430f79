"""The smoke task is drawn deterministically from validation text only; eval.tasks and
eval.early_stop_metric are checked before anything starts; early stopping on a task replays a
resumed run's earlier scores."""
from __future__ import annotations

import json

import numpy as np
import pytest
from ml_collections import ConfigDict

import helpers
from core.errors import DataError
from gates import config_sanity
from train.data import prepare, smoke_task
from train.data.tokenizer import build_tokenizer
from train.infer import tasks
from train.run import tasks_edge


@pytest.fixture(scope="module")
def split():
  """Tiny Shakespeare's train and val text as the default experiment splits it (the tail)."""
  text = helpers.CORPUS.read_text(encoding="utf-8")
  tok = build_tokenizer("char", text)
  train, val = prepare.split_tokens(tok.encode(text), 0.1)
  return tok, train, val


def test_deterministic_and_from_validation_text_only(split):
  tok, train, val = split
  items = smoke_task.build([val], tok.decode, 128)
  assert items == smoke_task.build([val.copy()], tok.decode, 128)
  assert items != smoke_task.build([val], tok.decode, 128, seed=1)
  val_text, train_text = tok.decode(val), tok.decode(train)
  context, continuation = smoke_task.sizes(128)
  assert (context, continuation) == (120, 8) and len(items) == smoke_task.ITEMS
  for ctx, choices, gold in items:
    assert len(ctx) == context and len(choices) == 4 and len(set(choices)) == 4
    assert all(len(c) == continuation and c in val_text for c in choices)
    assert ctx + choices[gold] in val_text  # the delimiter is '': the text continues directly
    assert ctx not in train_text  # held-out text: no passage of it was trained on
  assert len({ctx for ctx, _, _ in items}) == len(items)
  golds = np.bincount([g for _, _, g in items], minlength=4)
  assert golds.min() > 30, golds  # the gold position is drawn, not always first


def test_items_stay_inside_one_document_and_fit_the_context():
  """With an end-of-text id, no item spans two documents; context + continuation fill the
  model's window for any max_seq_len."""
  tok = build_tokenizer("char", "abcdefghij|")
  eos = tok.encode("|")[0]
  rng = np.random.default_rng(0)
  docs = [rng.integers(0, eos, rng.integers(40, 90)) for _ in range(60)]
  stream = np.concatenate([np.append(d, eos) for d in docs])
  texts = [tok.decode(d) for d in docs]
  items = smoke_task.build([stream], tok.decode, 32, eos_id=eos, items=50)
  for ctx, choices, gold in items:
    assert "|" not in ctx + "".join(choices)
    assert any(ctx + choices[gold] in t for t in texts)
  for max_seq_len in (8, 32, 64, 128, 4096):
    assert sum(smoke_task.sizes(max_seq_len)) == max_seq_len


def test_a_split_too_short_is_one_line(split):
  tok, _, val = split
  with pytest.raises(DataError, match="needs 200: raise data.val_fraction or leave 'smoke'"):
    smoke_task.build([val[:2000]], tok.decode, 128)


def test_written_task_reads_back_with_the_same_hash(split, tmp_path):
  tok, _, val = split
  task = tasks.Task("smoke", tuple(tasks.Item(c, ch, g) for c, ch, g in
                                   smoke_task.build([val], tok.decode, 64)), "")
  a = tasks_edge.write_task(str(tmp_path / "a" / "smoke.jsonl"), task)
  b = tasks_edge.write_task(str(tmp_path / "b" / "smoke.jsonl"), task)
  assert a == b and len(a) == 64
  assert tasks_edge.load_smoke(str(tmp_path / "a" / "smoke.jsonl")) == task
  assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["smoke.jsonl"]


@pytest.mark.parametrize("tasks_spec,metric,needle", [
    ("smoke,a/x.jsonl,b/x.jsonl", "val_loss", "names two tasks 'x'"),
    ("other/smoke.jsonl", "val_loss", "the name 'smoke' is the smoke task"),
    ("smoke", "task:other:acc", "eval.early_stop_metric='task:other:acc'"),
    ("smoke", "task:smoke:f1", "task:NAME:acc | task:NAME:acc_norm"),
    ("", "accuracy", "eval.early_stop_metric='accuracy'")])
def test_task_settings_refused_in_one_line(tasks_spec, metric, needle):
  cfg = helpers.tiny_config(None, {"eval.tasks": tasks_spec, "eval.early_stop_metric": metric})
  found = config_sanity.problems(cfg.to_dict())
  assert len(found) == 1 and needle in found[0], found


def test_task_names_and_the_watched_metric():
  assert config_sanity.task_names(" smoke , data/tasks/hella.jsonl,") == [
      ("smoke", "smoke"), ("hella", "data/tasks/hella.jsonl")]
  assert config_sanity.early_stop_metric("val_loss", "") is None
  assert config_sanity.early_stop_metric("task:hella:acc_norm", "smoke,x/hella.jsonl") == (
      "hella", "acc_norm")


def test_unreadable_task_file_is_refused_by_preflight(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "gold": 1}) + "\n"
                 + json.dumps({"context": "a", "choices": ["b"], "answer": 0}) + "\n")
  with pytest.raises(DataError, match=r"eval.tasks='smoke,.*bad.jsonl line 2: missing key"):
    tasks_edge.check_paths(f"smoke,{bad}")
  tasks_edge.check_paths("smoke")  # built from the val split: nothing to read yet


def _edge(tmp_path, patience: int, min_delta: float = 0.0) -> tasks_edge.TaskEdge:
  task = tmp_path / "qa.jsonl"
  task.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "gold": 0}) + "\n")
  config = ConfigDict({"eval": {"tasks": str(task), "tasks_every": 0,
                                "early_stop_metric": "task:qa:acc",
                                "early_stop_patience": patience,
                                "early_stop_min_delta": min_delta},
                       "batch": {"global_batch": 4, "grad_accum": 1}})
  return tasks_edge.TaskEdge(config, None, build_tokenizer("char", "abc "), 32,
                             str(tmp_path))


def _scored(step: int, acc: float) -> dict:
  return {"event": "tasks", "step": step, "qa/acc": acc, "qa/n": 1}


def test_early_stop_watches_the_task_and_resumes_its_count(tmp_path):
  edge = _edge(tmp_path, patience=2)
  for step, acc, stop in ((10, 0.5, False), (20, 0.6, False), (30, 0.55, False),
                          (40, 0.6, True)):
    edge._track(_scored(step, acc))
    assert edge.early_stop(val_loss_says=False, scored=True) is stop, step
  assert not edge.early_stop(val_loss_says=True, scored=False)  # the val loss is not watched
  # A run resumed at step 30 replays the records up to it (not the crashed step 40's).
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
      {"event": "gate"}, {"event": "train", "step": 10, "loss": 1.0}, _scored(10, 0.5),
      _scored(20, 0.6), _scored(30, 0.55), _scored(40, 0.6)]))
  resumed = _edge(tmp_path, patience=2)
  assert resumed.publish(30, is_main=False)["qa"]["items"] == 1
  assert resumed.tracker.bad_evals == 1 and resumed.tracker.best == -0.6
  resumed._track(_scored(40, 0.6))
  assert resumed.early_stop(False, True)
