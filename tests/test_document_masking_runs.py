"""Document masking in real runs, on Tiny Shakespeare split into its speeches (documents ended
by an end-of-text id): on by default for such data and said so at start-up, recorded in the
checkpoint and its eval batches, reproduced by `pregate-eval`, a resumed masked run bitwise
equal to an uninterrupted one, and a resume that would change the masking refused."""
import json

import numpy as np
import pytest

import helpers
import shared_runs
from train.data import pipeline, prepare
from train.data.documents import Packing

pytestmark = pytest.mark.e2e

STEPS, STOP_AT = 40, 15
SPEECHES = {"data.txt_separator": "\n\n", "data.eot_token": "<|endoftext|>",
            "data.val_split": "documents", "model.vocab_size": 66, "batch.seq_len": 128,
            "model.max_seq_len": 128, "train_steps": STEPS}


@pytest.fixture(scope="session")
def speeches(shared_root) -> str:
  """The speeches prepared once per test run (shared by every worker)."""
  return str(shared_runs.once(shared_root, "speeches", lambda out: prepare.prepare(
      str(helpers.CORPUS), str(out), "char", 0.1, eot_token="<|endoftext|>",
      val_split="documents", txt_separator="\n\n")))


def _flags(data_dir, **over):
  return [*helpers.tiny_flags(data_dir, {**SPEECHES, **over}), helpers.FORCE]


def _make_runs(root, speeches: str) -> None:
  """An uninterrupted masked run, one stopped at STOP_AT and resumed (after a resume that would
  change the masking), and an unmasked one; their results in root/results.json."""
  root.mkdir(parents=True)
  off = {"data.document_masking": False}
  argvs = {"whole": (_flags(speeches), "whole"),
           "first": ([*_flags(speeches), f"--stop_after_steps={STOP_AT}"], "split"),
           "changed": (_flags(speeches, **off), "split"),
           "second": (_flags(speeches), "split"),
           "plain": (_flags(speeches, **off), "plain")}
  results = {}
  for name, (argv, workdir) in argvs.items():
    res = helpers.run_main(*argv, workdir=root / workdir)
    results[name] = {"rc": res.rc, "stdout": res.stdout, "stderr": res.stderr}
  (root / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(speeches, shared_root):
  """The runs, made once per test run whichever worker gets these tests first."""
  root = shared_runs.once(shared_root, "masked_runs", lambda r: _make_runs(r, speeches))
  results = json.loads((root / "results.json").read_text())
  return {"root": root, **{k: helpers.Result(v["rc"], v["stdout"], v["stderr"], 0.0)
                           for k, v in results.items()}}


def test_masking_is_on_for_documents_and_said_at_start(runs):
  whole = runs["whole"]
  assert whole.rc == 0, whole.stderr[-3000:]
  line = next(ln for ln in whole.stderr.splitlines() if "packing:" in ln)
  assert "document masking on, positions restart per document" in line
  assert "documents per window" in line and "causal attention pairs masked" in line
  meta = helpers.checkpoint_meta(runs["root"] / "whole", STEPS)
  assert meta["packing"] == Packing(True, True).to_json()
  assert meta["eval_batches"]["packing"] == Packing(True, True).to_json()
  plain = runs["plain"]
  assert plain.rc == 0, plain.stderr[-3000:]
  assert "plain causal attention across packed documents" in plain.stderr
  plain_meta = helpers.checkpoint_meta(runs["root"] / "plain", STEPS)
  assert plain_meta["packing"] == Packing().to_json()
  assert "packing" not in plain_meta["eval_batches"]
  assert plain_meta["val_loss"] != meta["val_loss"]  # the same data and seed, another model


def test_resumed_masked_run_is_bitwise_identical(runs):
  assert runs["first"].rc == 75, runs["first"].stderr[-3000:]
  assert runs["second"].rc == 0, runs["second"].stderr[-3000:]
  split, whole = runs["root"] / "split", runs["root"] / "whole"
  got, want = (helpers.flat(helpers.load_params(w, STEPS)) for w in (split, whole))
  assert got.keys() == want.keys() and want
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  evals = lambda w: {r["step"]: r["val_loss"] for r in
                     helpers.events(helpers.read_jsonl(w / "metrics.jsonl"), "eval")}
  assert evals(split) == evals(whole)


def test_a_resume_cannot_change_the_masking(runs):
  helpers.assert_one_line_error(runs["changed"], "data.document_masking")
  assert runs["changed"].rc == 2


def test_pregate_eval_reproduces_the_masked_val_loss(runs):
  """pregate-eval's program is not the loop's (a masked mean and count, its own mesh): equal on
  an AVX2 EPYC, 1 ulp apart (2.4e-7 at 3.36) on an AVX-512 Xeon. The unmasked run of the same
  data ends 1.9e-2 away, so a few ulps still prove the masking is the loop's."""
  res = helpers.command("train.cli.evaluate", f"--checkpoint={runs['root'] / 'whole'}")
  assert res.rc == 0, res.stderr[-3000:]
  result = json.loads(res.stdout.split("RESULT ", 1)[1])
  assert result["abs_diff"] <= 1e-6 * result["recorded_val_loss"], result


def test_masked_batches_are_a_pure_function_of_seed_and_index(speeches):
  """Batch i's segments depend on (seed, i) only, and each process of a split run holds its
  rows of the same global batch, segments included."""
  train = pipeline.open_split(speeches, "train")
  kw = dict(global_batch=8, seq_len=128, seed=3, num_batches=5, packing=Packing(True, True))
  whole = pipeline.BatchSource(train, **kw)
  again = pipeline.BatchSource(pipeline.open_split(speeches, "train"), **kw)
  halves = [pipeline.BatchSource(train, process_index=p, process_count=2, **kw)
            for p in range(2)]
  for i in (4, 0, 2):
    b = whole[i]
    assert set(b) == {"inputs", "targets", "segment_ids", "positions"}
    for key in b:
      np.testing.assert_array_equal(b[key], again[i][key])
      np.testing.assert_array_equal(b[key], np.concatenate([h[i][key] for h in halves]))
    eot = 65  # the char vocabulary's end-of-text id: a document's last token
    after = np.zeros_like(b["inputs"], bool)
    after[:, 1:] = b["inputs"][:, :-1] == eot
    np.testing.assert_array_equal(after[:, 1:], (b["positions"] == 0)[:, 1:])
  assert whole[1]["segment_ids"].max() >= 1  # windows do span documents


def test_mixture_batches_carry_each_sources_segments(speeches):
  """A mixture draws each window from its source and finds its documents in that source's
  offsets: a document starts exactly after an end-of-text id in every row, whichever source
  the row came from, and the process split keeps its rows' segments."""
  arrays = [pipeline.open_split(speeches, "train") for _ in range(2)]
  mix = pipeline.MixtureTokens(["a", "b"], arrays, [0.7, 0.3], block=16)
  assert mix.documents() == 2 * arrays[0].documents()
  kw = dict(global_batch=8, seq_len=128, seed=5, num_batches=3, packing=Packing(True, True))
  whole = pipeline.BatchSource(mix, **kw)[2]
  halves = [pipeline.BatchSource(mix, process_index=p, process_count=2, **kw)[2]
            for p in range(2)]
  for key in whole:
    np.testing.assert_array_equal(whole[key], np.concatenate([h[key] for h in halves]))
  after_eot = whole["inputs"][:, :-1] == 65
  np.testing.assert_array_equal(after_eot, whole["positions"][:, 1:] == 0)
  np.testing.assert_array_equal(np.diff(whole["segment_ids"], axis=1), after_eot)


def test_plan_reports_the_packing_of_prepared_data(speeches):
  res = helpers.command("train.cli.plan", f"--config={helpers.CONFIG}",
                        *_flags(speeches)[:-1], f"--data_dir={speeches}")
  assert res.rc in (0, 3), res.stderr[-3000:]
  line = next(ln for ln in res.stdout.splitlines() if ln.startswith("packing:"))
  assert "document masking on" in line and "documents per window" in line
  off = helpers.command("train.cli.plan", f"--config={helpers.CONFIG}",
                        *_flags(speeches, **{"data.document_masking": False})[:-1],
                        f"--data_dir={speeches}")
  assert "packing: plain causal attention" in off.stdout, off.stdout[-2000:]


def test_masking_without_offsets_is_one_line(speeches, tmp_path):
  """Prepared data whose document offsets are gone: masking cannot find documents and says
  how to fix it, instead of treating the split as one document."""
  import shutil
  copy = tmp_path / "data"
  shutil.copytree(speeches, copy)
  shutil.rmtree(copy / "train_offsets")
  with pytest.raises(pipeline.DataError, match="document offsets .* re-run pregate-prepare"):
    pipeline.open_split(str(copy), "train").documents()
