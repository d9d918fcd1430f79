"""A pregate checkpoint through lm-evaluation-harness gives pregate's own task scores.

`pregate-eval --tasks` and both harness doors, `pregate-lm-eval --model pregate` (a child,
offline, its Hugging Face caches in a temporary directory) and
`lm_eval.simple_evaluate(model=PregateLM(...))` in process, on a local JSONL task, must report the
acc, acc_norm and their stderr that `tasks.score_checkpoint` gives: the harness builds the
requests (target_delimiter, its own context/continuation split) and aggregates, pregate only
answers log-likelihoods, so any difference in convention shows here.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

import helpers
from train.infer import tasks

pytestmark = pytest.mark.e2e

STEP = 20  # trained_tiny's last checkpoint
MODEL_ARGS = "checkpoint={},step=20,batch_size=4"
ITEMS = [  # contexts ending in a space or a newline test the harness's space move
    tasks.Item("First Citizen:\nBefore we proceed any further, hear me", ("speak.", "xqzj"), 0),
    tasks.Item("All:\nSpeak, ", ("speak.", "zz", "Citizen"), 0),
    tasks.Item("First Citizen:\n", ("You are all resolved", "q", "Qqq qqq"), 0),
    tasks.Item("We are accounted poor citizens, the", ("patricians good.", "the", "xx"), 1),
    tasks.Item("MENENIUS:\nWhat work's, my countrymen, in", ("hand?", "hhhhhhhhhh"), 0),
    tasks.Item("Let us kill him, and we'll have corn at our own", ("price.", "pr", "ice"), 0),
    tasks.Item("Second Citizen:\nOne word, good", ("citizens.", "ci", "zzz zzz zzz"), 2),
    tasks.Item("What authority surfeits on would relieve", ("us", "them all now", "k"), 1),
]
YAML = """task: mytask
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("lm_eval_task")
  tasks.write_task(str(root / "mytask.jsonl"), ITEMS)
  (root / "mytask.yaml").write_text(YAML.format(data=root / "mytask.jsonl",
                                                cache=root / "datasets_cache"))
  return root


def offline(root) -> dict[str, str]:
  """Nothing downloaded, nothing written under ~."""
  return {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
          "HF_HOME": str(root / "hf"), "HF_DATASETS_CACHE": str(root / "hf" / "datasets")}


def assert_same(harness: dict, want: tasks.TaskScore) -> None:
  for metric in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
    assert abs(harness[f"{metric},none"] - getattr(want, metric)) <= 1e-9, (metric, harness)


def test_harness_cli_and_api_equal_pregate_scores(trained_tiny, task_dir, tmp_path,
                                                  monkeypatch):
  want = tasks.score_checkpoint(str(trained_tiny), [str(task_dir / "mytask.jsonl")], STEP,
                                batch_size=4)[0]
  assert want.n == len(ITEMS) and want.acc != want.acc_norm
  res = helpers.command("train.cli.evaluate", f"--checkpoint={trained_tiny}", f"--step={STEP}",
                        f"--tasks={task_dir / 'mytask.jsonl'}", "--task_batch_size=4")
  assert res.rc == 0, res.stderr[-3000:]
  assert "mytask  8" in res.stdout  # the table: task, n, acc ± stderr, acc_norm ± stderr, chance
  result = json.loads(res.stdout.split("RESULT ", 1)[1])
  assert result == {"step": STEP, "tasks": [want.to_dict()]}
  (task_dir / "bad.jsonl").write_text('{"context": "a", "choices": ["b"], "gold": 0}\n')
  helpers.assert_one_line_error(
      helpers.command("train.cli.evaluate", f"--checkpoint={trained_tiny}",
                      f"--tasks={task_dir / 'bad.jsonl'}"), "bad.jsonl line 1", "choices")

  out = tmp_path / "results"
  res = helpers.command("train.cli.lm_eval", "--model", "pregate", "--model_args",
                        MODEL_ARGS.format(trained_tiny), "--tasks", "mytask", "--include_path",
                        str(task_dir), "--output_path", str(out), "--include_path_only",
                        env=offline(tmp_path))
  assert res.rc == 0, res.stderr[-3000:]
  (results,) = out.rglob("results*.json")
  assert_same(json.loads(results.read_text())["results"]["mytask"], want)

  for key, value in offline(tmp_path).items():
    monkeypatch.setenv(key, value)
  import lm_eval
  from lm_eval.tasks import TaskManager

  from train.infer.lm_eval_model import PregateLM
  # as the harness builds it from --model_args: their batch_size wins over its --batch_size
  lm = PregateLM.create_from_arg_string(MODEL_ARGS.format(trained_tiny), {"batch_size": 1})
  assert (lm.step, lm.eot_token_id) == (STEP, None)  # the char tokenizer has no end-of-text
  got = lm_eval.simple_evaluate(model=lm, tasks=["mytask"],
                                task_manager=TaskManager(include_path=str(task_dir),
                                                          include_defaults=False))
  assert_same(got["results"]["mytask"], want)

  # The other two request kinds, on the same model: a whole text's log-likelihood (one
  # window; the char tokenizer has no end-of-text id, so the first character conditions the
  # rest) against a full forward pass, and generation cut at `until`.
  text = "First Citizen:\nBefore we proceed any further"
  ids = lm.tok_encode(text)
  logits = np.asarray(lm.model(np.asarray([ids[:-1]], np.int32))[0], np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  full = sum(logp[t, ids[t + 1]] for t in range(len(ids) - 1))
  (rolling,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
  assert rolling == pytest.approx(full, abs=1e-3)

  from train.infer import generate
  raw = generate.generate(lm.model, lm.pregate_tokenizer, "First Citizen:\n", 24, temperature=0.0)
  (cut,) = lm.generate_until([SimpleNamespace(args=("First Citizen:\n",
                                                    {"until": [raw[3]], "max_gen_toks": 24}))])
  assert cut == raw.split(raw[3])[0] and len(cut) <= 3
