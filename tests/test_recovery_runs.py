"""A run that heals itself, in real runs with injected faults (tests/children/faulty_main.py):
a poisoned batch is skipped inside the step; a poisoned window triggers a rollback whose
healed run is bitwise the run that skipped the same batches from the start, also when the
process is killed mid-recovery and resumed; the re-run tells bad data from non-determinism;
rollbacks stop after guard.max_rollbacks; a hang is named by the watchdog, with stacks."""
import json

import numpy as np
import pytest

import helpers
import shared_runs

pytestmark = pytest.mark.e2e

STEPS = 60
GUARD = {"train_steps": STEPS, "eval.eval_every": 20, "checkpoint.save_every": 20,
         "guard.spike_window": 16}
# name -> (seam environment, config overrides, workdir); the order matters for "resumed".
RUNS = {  # one_spike also hangs at step 45; rerun meets bad data at step 31, a flaky batch at 45
    "one_spike": ({"PREGATE_TEST_POISON": "30:31", "PREGATE_TEST_HANG_AT": "45"},
                  {"guard.watchdog_floor_s": 3.0, "guard.watchdog_factor": 3.0}, "one_spike"),
    "healed": ({"PREGATE_TEST_POISON": "30:37"}, {"guard.rollback_skip_batches": 10}, "healed"),
    "clean": ({}, {"data.skip_batches": "30:39"}, "clean"),
    "killed": ({"PREGATE_TEST_POISON": "30:37", "PREGATE_TEST_KILL_ONCE": "{root}/kill.flag"},
               {"guard.rollback_skip_batches": 10}, "killed"),
    "resumed": ({"PREGATE_TEST_POISON": "30:37", "PREGATE_TEST_KILL_ONCE": "{root}/kill.flag"},
                {"guard.rollback_skip_batches": 10}, "killed"),
    # ... then a third failure at batch 52, past guard.max_rollbacks=2: the run gives up.
    "rerun": ({"PREGATE_TEST_POISON": "30:30", "PREGATE_TEST_FLAKY": "45,52"},
              {"guard.rollback_skips": 1, "guard.max_rollbacks": 2}, "rerun"),
}


def _make(root, data_dir: str) -> None:
  root.mkdir(parents=True)
  results = {}
  for name, (seams, over, workdir) in RUNS.items():
    argv = [str(helpers.CHILDREN / "faulty_main.py"), f"--config={helpers.CONFIG}",
            f"--workdir={root / workdir}", *helpers.tiny_flags(data_dir, {**GUARD, **over}),
            helpers.FORCE]
    env = {**helpers.child_env(), **{k: v.format(root=root) for k, v in seams.items()}}
    proc = helpers.start(argv, env, 300)
    results[name] = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}
  (root / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs(prepared_data, shared_root):
  root = shared_runs.once(shared_root, "recovery_runs", lambda r: _make(r, prepared_data))
  return root, json.loads((root / "results.json").read_text())


def _recovery(root, workdir):
  return json.loads((root / workdir / "recovery.json").read_text())


def _params(root, workdir):
  return helpers.flat(helpers.load_params(root / workdir, STEPS))


def test_a_spike_is_skipped_inside_the_step_and_recorded(runs):
  root, _ = runs
  meta = helpers.checkpoint_meta(root / "one_spike", 40)
  assert meta["spikes_skipped"] == 2 and meta["rollbacks"] == []
  train = helpers.events(helpers.read_jsonl(root / "one_spike" / "metrics.jsonl"), "train")
  # Batches 30 and 31 are what steps 31 and 32 train on.
  assert [r["spikes"] for r in train if r["step"] in (30, 40)] == [0, 2]
  assert not (root / "one_spike" / "recovery.json").exists() or \
      _recovery(root, "one_spike")["rollbacks"] == []


def test_healed_run_is_bitwise_the_run_that_skipped_the_window(runs):
  root, res = runs
  for name in ("healed", "clean"):
    assert res[name]["rc"] == 0, res[name]["stderr"][-3000:]
  (rollback,) = _recovery(root, "healed")["rollbacks"]
  assert (rollback["to_step"], rollback["skipped_batches"]) == (20, [30, 39])
  assert rollback["verdict"] == "bad data"
  got, want = _params(root, "healed"), _params(root, "clean")
  assert got.keys() == want.keys() and want
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)
  meta = helpers.checkpoint_meta(root / "healed", STEPS)
  assert meta["rollbacks"][0]["skipped_batches"] == [30, 39]
  records = helpers.read_jsonl(root / "healed" / "metrics.jsonl")
  assert [r["skipped_batches"] for r in helpers.events(records, "rollback")] == [[30, 39]]
  loss = lambda w: helpers.checkpoint_meta(root / w, STEPS)["val_loss"]
  assert loss("healed") == loss("clean")
  assert ("rollback 1: at step 33 to step 20 (3 loss spikes skipped within 50 steps"
          in res["healed"]["stdout"]), res["healed"]["stdout"][-2000:]  # the run summary
  from train.ckpt import metadata as metadata_lib
  from train.hf import model_card
  card = model_card._guards(metadata_lib.read(str(root / "healed" / "checkpoints"), STEPS))
  assert "rolled back at step 33 to step 20 (bad data, batches 30..39 skipped)" in card, card
  from train.report import records as records_lib
  run = records_lib.effective(records)
  assert run.rollbacks == [30]
  assert [r["step"] for r in run.events("train")] == list(range(10, STEPS + 1, 10))


def test_a_kill_during_recovery_resumes_into_the_same_state(runs):
  root, res = runs
  assert res["killed"]["rc"] == -9, res["killed"]["stderr"][-3000:]
  assert res["resumed"]["rc"] == 0, res["resumed"]["stderr"][-3000:]
  got, want = _params(root, "killed"), _params(root, "healed")
  for path in want:
    np.testing.assert_array_equal(got[path], want[path], err_msg=path)


def test_the_rerun_tells_bad_data_from_a_nondeterministic_fault(runs):
  root, res = runs
  data, flaky = _recovery(root, "rerun")["rollbacks"]
  assert data["verdict"] == "bad data" and data["rerun_loss"] == data["recorded_loss"]
  assert data["skipped_batches"] == [30, 30]
  assert flaky["verdict"].startswith("non-deterministic") and flaky["skipped_batches"] is None
  assert flaky["rerun_loss"] < flaky["recorded_loss"] and flaky["to_step"] == 40


def test_rollbacks_stop_after_the_limit_in_one_line(runs):
  root, res = runs
  got = res["rerun"]
  assert got["rc"] == 4, got["stderr"][-3000:]
  out = got["stdout"] + got["stderr"]
  errors = [line for line in out.splitlines() if line.startswith("ERROR:")]
  assert "Traceback" not in out and len(errors) == 1, out[-3000:]
  assert "guard.max_rollbacks=2" in errors[0] and "the run keeps failing" in errors[0]
  end = helpers.events(helpers.read_jsonl(root / "rerun" / "metrics.jsonl"), "end")[-1]
  assert end["termination"] == "ROLLBACK_LIMIT"


def test_a_hang_is_named_with_every_stack(runs):
  root, res = runs
  assert res["one_spike"]["rc"] == 76, res["one_spike"]["stderr"][-3000:]
  (dump,) = (root / "one_spike" / "hangs").iterdir()
  text = dump.read_text()
  # Wedged fetching step 45's batch: step 44 was the last started, 43 the last read back.
  assert dump.name == "process0-step44.txt"
  assert "(last started 44, last completed 43)" in text and "_before_step" in text
