"""The watchdog across processes: in a two-process run on 127.0.0.1 whose process 1 wedges
before a step (a data worker that never returns), process 0, itself stuck in that step's
collective, names process 1 as the one that went quiet and exits 76; both leave their stacks in
the workdir."""
import time
from pathlib import Path

import portpicker
import pytest

import helpers

pytestmark = pytest.mark.multiprocess

FLAGS = {"train_steps": 12, "schedule.warmup_steps": 2, "eval.eval_every": 6,
         "checkpoint.save_every": 6, "batch.global_batch": 8, "guard.watchdog_floor_s": 2.0,
         "guard.watchdog_factor": 2.0}


def test_process_zero_names_the_quiet_process(prepared_data, tmp_path):
  workdir = tmp_path / "run"
  addr = f"127.0.0.1:{portpicker.pick_unused_port()}"
  argv = [str(helpers.CHILDREN / "faulty_main.py"), f"--config={helpers.CONFIG}",
          f"--workdir={workdir}", *helpers.tiny_flags(prepared_data, FLAGS), helpers.FORCE,
          f"--coordinator_address={addr}", "--num_processes=2"]
  env = {**helpers.fake_devices(1), "PREGATE_TEST_HANG_AT": "5",
         "PREGATE_TEST_HANG_PROCESS": "1"}
  procs = [helpers.spawn([*argv, f"--process_id={i}"], tmp_path / f"p{i}.out",
                         tmp_path / f"p{i}.err", env=env) for i in range(2)]
  deadline = time.monotonic() + 180
  while procs[0].poll() is None and time.monotonic() < deadline:
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()
  errs = "\n".join(f"--- process {i} rc={p.returncode}:\n"
                   f"{Path(tmp_path / f'p{i}.err').read_text()[-2500:]}"
                   for i, p in enumerate(procs))
  assert procs[0].returncode == 76, errs  # process 1 stays wedged until killed here
  # Process 0 dispatches ahead (asynchronously) and waits a step or two later.
  (zero,) = (workdir / "hangs").glob("process0-step*.txt")
  (one,) = (workdir / "hangs").glob("process1-step*.txt")
  named = zero.read_text().splitlines()[0]
  assert named.startswith("watchdog: process 1 went quiet: last started step 4"), named
  assert "_before_step" in one.read_text()
