"""A run with eval.tasks=smoke scores the smoke task at each evaluation: `tasks` records in
metrics.jsonl, TensorBoard scalars, the task's accuracy with its chance level in the run summary
and its cost in the time line; a task file that cannot be read is refused before compiling."""
from __future__ import annotations

import hashlib

import pytest

import helpers
import shared_runs
from train.report import records as rec
from train.run import tasks_edge
from train.run import tensorboard as tb

pytestmark = pytest.mark.e2e
STEPS = [100, 200, 300, 400, 450]  # every evaluation, the last step's included


@pytest.fixture(scope="module")
def run(prepared_data, shared_root):
  return shared_runs.tasks_passing(prepared_data, shared_root)


def test_smoke_task_is_scored_recorded_and_summarised(run):
  records = rec.load(str(run))
  files = helpers.events(records, "task_files")
  smoke = run / "tasks" / "smoke.jsonl"
  assert len(files) == 1 and files[0]["smoke"]["path"] == str(smoke)
  assert files[0]["smoke"]["sha256"] == hashlib.sha256(smoke.read_bytes()).hexdigest()
  assert files[0]["smoke"]["items"] == 200 and files[0]["smoke"]["chance"] == 0.25
  scored = helpers.events(records, "tasks")
  assert [r["step"] for r in scored] == [r["step"] for r in helpers.events(records, "eval")] \
      == STEPS
  for r in scored:
    assert r["smoke/n"] == 200 and r["smoke/chance"] == 0.25 and r["seconds"] > 0
    assert 0.0 <= r["smoke/acc"] <= 1.0 and r["smoke/acc_stderr"] > 0
  # The trained model uses its context: clearly above chance (0.395 measured).
  assert scored[-1]["smoke/acc"] > 0.25 + 2 * scored[-1]["smoke/acc_stderr"], scored[-1]
  scalars = tb.read_scalars(str(run / "tensorboard"))
  for key in ("acc", "acc_norm", "chance", "n"):
    assert sorted(scalars[f"tasks/smoke/{key}"]) == STEPS
  assert scalars["tasks/smoke/acc"][450] == pytest.approx(scored[-1]["smoke/acc"])
  out = (run / "stdout.txt").read_text().splitlines()
  last = scored[-1]
  assert (f"task smoke: acc {last['smoke/acc']:.3f} ± {last['smoke/acc_stderr']:.3f}, acc_norm "
          f"{last['smoke/acc_norm']:.3f} (chance 0.250, n=200) at step 450") in out
  time_line = next(line for line in out if line.startswith("wall time (this process)"))
  spent = sum(r["seconds"] for r in scored)
  assert f", tasks {spent:.1f}s (" in time_line, time_line


def test_the_written_smoke_task_is_the_one_drawn_from_the_val_split(run, prepared_data):
  """The file the run wrote is the task build_smoke draws from the prepared val split."""
  from train.data import pipeline
  from train.data.tokenizer import tokenizer_from_json
  tok = tokenizer_from_json(helpers.checkpoint_meta(run, 450)["tokenizer"])
  task = tasks_edge.build_smoke(pipeline.open_split(prepared_data, "val"), tok, 64)
  assert tasks_edge.load_smoke(str(run / "tasks" / "smoke.jsonl")) == task


@pytest.mark.parametrize("tasks,needle", [
    ("smoke,/nonexistent/task.jsonl", "cannot read task file /nonexistent/task.jsonl"),
    ("smoke,smoke", "names two tasks 'smoke'")])
def test_bad_task_path_is_refused_before_compiling(prepared_data, tmp_path, tasks, needle):
  workdir = tmp_path / "run"
  res = helpers.run_main(helpers.FORCE, *helpers.tiny_flags(prepared_data, {"eval.tasks": tasks}),
                         workdir=workdir, count_compiles=True)
  helpers.assert_one_line_error(res, "eval.tasks", needle)
  assert res.compiles == 0 and not workdir.exists()


def test_plot_draws_the_task_panel(run, tmp_path):
  from matplotlib.figure import Figure

  from train.report import plot
  runs = plot.load_runs([str(run)])
  assert plot._has(runs, "tasks") and "tasks" in plot.PANELS
  fig = Figure()
  ax = fig.add_subplot()
  plot.PANELS["tasks"](ax, runs)
  (line,) = ax.get_lines()[:1]
  assert list(line.get_xdata()) == STEPS and ax.get_title().startswith("task accuracy")
  assert [list(h.get_ydata()) for h in ax.get_lines()[1:]] == [[0.25, 0.25]]  # chance
