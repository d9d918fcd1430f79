"""Task scoring (train/infer/tasks.py) against a NumPy reference and lm-evaluation-harness's rules.

A tiny randomly initialised model decides which choice is likeliest; the items are built from its
own log-probabilities (a NumPy log-softmax of its logits), so acc and acc_norm are known before
`score()` runs: a scorer that read the wrong positions, dropped the moved space or normalised
by the wrong length would change them.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from flax import nnx

import helpers
from core.errors import DataError
from models.config import ModelConfig
from train.data import bpe
from train.infer import tasks
from train.state import sharding

WINDOW = 24
TEXT = ("the cat sat on the mat. the dog sat on the log. a bird sang in the tree. "
        "Q: is the cat on the mat? A: yes. Q: is the dog in the tree? A: no.\n")
CONTEXTS = ["the cat sat on the", "the dog sat ", "Q: is the cat on the mat? A:",
            "a bird sang in", "Q: is the dog in the tree?\nA: ",
            "the cat sat on the mat. the dog sat on the log. a bird sang in the tree. the cat"]
CHOICES = [("mat.", "log.", "tree and the mat."), ("on the log.", "in", "a"),
           ("yes.", "no.", "the dog sat on the mat."), ("the tree.", "a", "on the cat"),
           ("no.", "yes", "the"), ("sat.", "is on the mat", "in")]


@pytest.fixture(scope="module")
def tok():
  return bpe.train([TEXT] * 10, 300, "<|endoftext|>")


@pytest.fixture(scope="module")
def model_parts(tok):
  cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                    d_ff=64, max_seq_len=WINDOW)
  model = helpers.build_model(cfg, seed=3)
  return model, *nnx.split(model)


def reference_lls(model, reqs) -> np.ndarray:
  """Summed float64 log-probs of each continuation from the model's logits (one padded batch,
  the causal model ignores what follows), each row the last WINDOW + 1 tokens."""
  rows = [(ctx + cont)[-(WINDOW + 1):] for ctx, cont in reqs]
  batch = np.zeros((len(rows), WINDOW), np.int32)
  for r, row in enumerate(rows):
    batch[r, :len(row) - 1] = row[:-1]
  logits = np.asarray(model(jax.numpy.asarray(batch)), np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  out = []
  for r, ((_, cont), row) in enumerate(zip(reqs, rows)):
    n = len(row) - 1
    out.append(sum(logp[r, t, row[t + 1]] for t in range(n - len(cont), n)))
  return np.array(out)


def test_acc_and_acc_norm_match_a_numpy_reference(tok, model_parts):
  model, graphdef, params = model_parts
  draft = tasks.Task("draft", tuple(tasks.Item(c, ch, 0) for c, ch in zip(CONTEXTS, CHOICES)))
  reqs = tasks.requests(draft, tok)
  assert len(CONTEXTS[-1]) > WINDOW  # the last item is left-truncated to the window
  ref = reference_lls(model, reqs)
  loglik = tasks.make_loglik(graphdef, params, WINDOW, 4)
  np.testing.assert_allclose(loglik(reqs), ref, rtol=1e-5, atol=1e-5)

  items, want_acc, want_norm, at = [], [], [], 0
  for i, (ctx, choices) in enumerate(zip(CONTEXTS, CHOICES)):
    ll = ref[at:at + len(choices)]
    at += len(choices)
    per_char = ll / np.array([len(c) for c in choices], np.float64)
    for scores in (ll, per_char):  # no near-tie that float32 rounding could flip
      top2 = np.sort(scores)[-2:]
      assert top2[1] - top2[0] > 1e-3
    pred, pred_norm = int(np.argmax(ll)), int(np.argmax(per_char))
    gold = pred if i % 2 == 0 else (pred + 1) % len(choices)  # right on half, wrong on half
    items.append(tasks.Item(ctx, choices, gold))
    want_acc.append(float(pred == gold))
    want_norm.append(float(pred_norm == gold))
  assert want_acc != want_norm  # the choice lengths matter to this model: acc_norm is tested
  got = tasks.score(tasks.Task("t", tuple(items)), tok, loglik)
  assert (got.n, got.acc, got.acc_norm) == (len(items), np.mean(want_acc), np.mean(want_norm))
  assert 0 < got.acc < 1
  try:
    from lm_eval.api.metrics import mean_stderr
  except ImportError:
    def mean_stderr(xs):
      return np.std(xs, ddof=1) / math.sqrt(len(xs))
  assert got.acc_stderr == pytest.approx(mean_stderr(want_acc), abs=1e-12)
  assert got.acc_norm_stderr == pytest.approx(mean_stderr(want_norm), abs=1e-12)
  assert got.chance == pytest.approx(1 / 3)
  assert got.to_dict()["acc_norm"] == got.acc_norm

  # A new scorer for the same model and shapes (an in-loop evaluation's next call) and another
  # task's requests reuse the compiled program.
  compiles = []

  def on_event(event: str, secs: float, **kw) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(on_event)
  try:
    tasks.make_loglik(graphdef, params, WINDOW, 4)(reqs[:5])
  finally:
    jax.monitoring.unregister_event_duration_listener(on_event)
  assert compiles == []

  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  on_mesh = tasks.make_loglik(graphdef, params, WINDOW, 4, mesh)(reqs)
  np.testing.assert_allclose(on_mesh, loglik(reqs), rtol=1e-6, atol=1e-6)


def test_requests_split_as_the_harness_does(tok):
  ctx, cont = tasks.encode_pair(tok, "the dog sat ", " on the log.")
  # the trailing space moved to the continuation: "the dog sat" | "  on the log."
  assert ctx == tok.encode("the dog sat").tolist()
  assert ctx + cont == tok.encode("the dog sat  on the log.").tolist()
  assert tasks.encode_pair(tok, "", " mat") == ([tok.eos_id], tok.encode(" mat").tolist())
  task = tasks.Task("t", (tasks.Item("Q:", ("yes", "no"), 0),), delimiter="\n")
  assert tasks.requests(task, tok)[1] == tasks.encode_pair(tok, "Q:", "\nno")
  try:
    from lm_eval.api.model import TemplateLM
  except ImportError:
    return
  harness = SimpleNamespace(backend="causal", tok_encode=lambda s, **kw: tok.encode(s).tolist())
  for context, continuation in [("the dog sat ", " on the log."), ("A:\n", " yes"),
                                ("Q: is the cat", " on the mat?"), ("the  ", "\tcat")]:
    want = TemplateLM._encode_pair(harness, context, continuation)
    assert tasks.encode_pair(tok, context, continuation) == tuple(want)


def test_window_limits(tok, model_parts):
  _, graphdef, params = model_parts
  loglik = tasks.make_loglik(graphdef, params, WINDOW, 4)
  with pytest.raises(DataError, match="exceeds the model's window of 24"):
    loglik([([1], list(range(1, WINDOW + 2)))])


def test_write_then_load(tmp_path):
  items = [tasks.Item("a b", ("c", "d é"), 1), tasks.Item("", ("x", "y", "z"), 2)]
  path = str(tmp_path / "smoke.jsonl")
  tasks.write_task(path, items)
  task = tasks.load_task(path)
  assert (task.name, task.items, task.delimiter) == ("smoke", tuple(items), " ")
  assert task.chance == pytest.approx((1 / 2 + 1 / 3) / 2)
  with pytest.raises(DataError, match="gold must be"):
    tasks.write_task(path, [tasks.Item("a", ("b", "c"), 2)])


GOOD = '{"context": "a", "choices": ["b", "c"], "gold": 0}'


@pytest.mark.parametrize("line, problem", [
    ('{"context": "a", "choices": ["b", "c"], "gold": 0', "Expecting"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"context": "a", "choices": ["b", "c"]}', "missing key(s) ['gold']"),
    ('{"context": "a", "choices": ["b", "c"], "label": 0, "gold": 0}', "unknown key(s) ['label']"),
    ('{"context": "a", "choices": ["b"], "gold": 0}', "at least 2 non-empty strings"),
    ('{"context": "a", "choices": ["b", ""], "gold": 0}', "at least 2 non-empty strings"),
    ('{"context": 1, "choices": ["b", "c"], "gold": 0}', "context must be a string"),
    ('{"context": "a", "choices": ["b", "c"], "gold": 2}', "gold must be an integer index"),
    ('{"context": "a", "choices": ["b", "c"], "gold": true}', "gold must be an integer index"),
])
def test_bad_task_file_is_one_line_naming_the_line(tmp_path, line, problem):
  path = tmp_path / "bad.jsonl"
  path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n")
  with pytest.raises(DataError) as err:
    tasks.load_task(str(path))
  msg = str(err.value)
  assert "\n" not in msg
  assert f"task file {path} line 3: " in msg and problem in msg


def test_unreadable_or_empty_task_file(tmp_path):
  with pytest.raises(DataError, match="cannot read task file"):
    tasks.load_task(str(tmp_path / "missing.jsonl"))
  (tmp_path / "empty.jsonl").write_text("\n")
  with pytest.raises(DataError, match="has no items"):
    tasks.load_task(str(tmp_path / "empty.jsonl"))


def test_a_task_file_carries_its_delimiter(tmp_path):
  """A file written with another joining convention (the smoke task's '') reads back with it,
  so every reader (pregate-eval --tasks, the loop, pregate-ship) joins its items alike; lines
  that disagree are refused."""
  items = [tasks.Item("To be, or not to b", ("e", "x"), 0)]
  path = str(tmp_path / "joined.jsonl")
  tasks.write_task(path, items, delimiter="")
  assert tasks.load_task(path).delimiter == ""
  tasks.write_task(path, items)
  assert tasks.load_task(path).delimiter == " " and '"delimiter"' not in open(path).read()
  with open(path, "a") as f:
    f.write('{"context": "a", "choices": ["b", "c"], "gold": 0, "delimiter": "\\n"}\n')
  with pytest.raises(DataError, match="line 2: delimiter"):
    tasks.load_task(path)
