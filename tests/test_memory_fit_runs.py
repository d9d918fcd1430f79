"""The run's own memory verdict through the real command (contract memory-fit): a step that
does not fit `mesh.device_memory_gb` is refused after its compile and before step 1, in one line
with the breakdown and a fix, with nothing in the workdir; the printed fix runs; the Chinchilla
bypass does not bypass it; a step that fits shows its figure and headroom at start-up."""
import re

import pytest

import helpers

pytestmark = pytest.mark.e2e

# The tiny model on 32 x 128-token batches: activations (~11 MiB per device on 2 devices) far
# outweigh its 11k parameters, so a 6 MB device cannot hold the step but a split batch can.
WIDE = {"batch.global_batch": 32, "batch.seq_len": 128, "train_steps": 4,
        "schedule.warmup_steps": 1, "eval.eval_every": 4, "checkpoint.save_every": 4,
        "logging.log_every": 2, "mesh.device_memory_gb": 0.006}


@pytest.fixture(scope="module")
def refused(prepared_data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("memory") / "run"
  res = helpers.run_main(*helpers.tiny_flags(prepared_data, WIDE), helpers.FORCE,
                         workdir=workdir)
  return res, workdir


def _error(res: helpers.Result) -> str:
  """The one `ERROR:` line (the bypass's WARNING and the start-up log come before it)."""
  errors = [ln for ln in res.stderr.splitlines() if ln.startswith("ERROR:")]
  assert res.rc == 3 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
  return errors[0]


def test_too_big_is_refused_before_step_one(refused):
  res, workdir = refused
  line = _error(res)
  for part in ("MemoryRefusal: memory gate refused the run", "XLA's compiled step",
               "mesh.device_memory_gb", "estimate: ", "activations", "fix: --config."):
    assert part in line, (part, line)
  assert not workdir.exists(), "a refused run must not claim or write its workdir"
  assert "train_loss" not in res.stderr and "step 1/" not in res.stderr, line


def test_the_bypass_does_not_bypass_memory(refused):
  res, _ = refused  # run with --force_under_provisioned: the gate was bypassed, memory was not
  assert "chinchilla gate bypassed" in res.stderr
  assert "no flag bypasses this rule" in _error(res)


def test_the_printed_fix_runs(refused, prepared_data, tmp_path):
  res, _ = refused
  fix = re.search(r"fix: ((?:--config\.\S+=\S+ ?)+)", _error(res)).group(1).split()
  workdir = tmp_path / "fixed"
  again = helpers.run_main(*helpers.tiny_flags(prepared_data, WIDE), helpers.FORCE, *fix,
                           workdir=workdir)
  assert again.rc == 0, again.stderr[-3000:]
  shown = [ln for ln in again.stderr.splitlines() if "memory: " in ln and "XLA's compiled" in ln]
  assert shown and "fits, headroom" in shown[0], again.stderr[-3000:]
