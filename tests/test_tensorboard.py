"""TensorBoard event files hold what metrics.jsonl holds, step for step, across resumes.

The records of real runs are replayed through `TensorBoardSink` one process-run (segment) at a
time, with the step each resumed from, exactly as the loop feeds it; the files are read back with
the event protobufs and compared with metrics.jsonl.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import helpers
from train.report import records as rec
from train.run import tensorboard as tb

pytestmark = pytest.mark.e2e


def _replay(workdir, records) -> None:
  """Each segment through its own sink, as each train.main process would write it."""
  kept: list[dict] = []
  for i, seg in enumerate(rec.segments(records)):
    start = 0 if i == 0 else rec.resume_step(kept, seg)
    sink = tb.TensorBoardSink(str(workdir), start_step=start)
    for record in seg:
      sink.write(record)
    sink.close()
    kept.extend(seg)


def _expected(records) -> dict[str, dict[int, object]]:
  """{tag: {step: value}} that the event files must show: the run's effective records (newest
  segment wins), numbers at float32 (the event format's scalar), strings as text."""
  run = rec.effective(records)
  out: dict[str, dict[int, object]] = {}
  step = 0
  for r in run.records:
    step = r.get("step", step)
    for key, value in r.items():
      if key in ("event", "time", "step") or value is None:
        continue
      tag = f"{r['event']}/{key}"
      if isinstance(value, (bool, int, float)):
        out.setdefault(tag, {}).setdefault(step, float(np.float32(value)))
      elif isinstance(value, str):
        out.setdefault(tag, {}).setdefault(step, value)
  return out


def _compare(got, want) -> None:
  assert set(got) >= set(want), sorted(set(want) - set(got))
  for tag, series in want.items():
    assert sorted(got[tag]) == sorted(series), tag
    for step, value in series.items():
      if isinstance(value, float) and math.isnan(value):
        assert math.isnan(got[tag][step]), (tag, step)
      else:
        assert got[tag][step] == value, (tag, step, got[tag][step], value)


def test_events_equal_metrics_jsonl_step_for_step_across_a_preemption(preempted, tmp_path):
  records = helpers.read_jsonl(preempted / "metrics.jsonl")
  assert [r["termination"] for r in helpers.events(records, "end")] == ["PREEMPTED",
                                                                        "COMPLETED"]
  _replay(tmp_path, records)
  got = tb.read_run(tb.logdir(str(tmp_path)))
  _compare(got, _expected(records))
  assert sorted(got["train/loss"]) == [10, 20, 30]
  assert sorted(got["eval/val_loss"]) == [10, 20, 30]
  assert got["gate/zone"] == {0: "DEGENERATION", 10: "DEGENERATION"}
  assert got["end/termination"] == {10: "PREEMPTED", 30: "COMPLETED"}


def test_preempted_and_resumed_files_hold_each_step_exactly_once(preempted, tmp_path):
  """On disk, not only as TensorBoard shows it: two event files, no purge marker, every
  (tag, step) once and each tag's steps increasing in write order."""
  _replay(tmp_path, helpers.read_jsonl(preempted / "metrics.jsonl"))
  files = tb.event_files(tb.logdir(str(tmp_path)))
  assert len(files) == 2
  seen: dict[str, list[int]] = {}
  for path in files:
    for event in tb.read_events(path):
      assert not event.HasField("session_log"), "a purge marker where nothing was re-done"
      for value in event.summary.value:
        seen.setdefault(value.tag, []).append(event.step)
  for tag, steps in seen.items():
    assert steps == sorted(set(steps)), (tag, steps)
  assert seen["train/loss"] == [10, 20, 30]


def test_crashed_run_shows_the_redone_steps_once(crashed, tmp_path):
  """Steps 21..25 were logged, lost with the crash, and re-done from checkpoint 20: TensorBoard
  (purge marker at 21) and metrics.jsonl (newest segment) both give the re-done values."""
  records = rec.load(str(crashed))
  train = helpers.events(records, "train")
  assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 25, 30]
  _replay(tmp_path, records)
  got = tb.read_run(tb.logdir(str(tmp_path)))
  _compare(got, _expected(records))
  assert sorted(got["train/loss"]) == [5, 10, 15, 20, 25, 30]
  redone = train[-2]
  assert got["train/tokens_per_s"][25] == np.float32(redone["tokens_per_s"])
  markers = [e for p in tb.event_files(tb.logdir(str(tmp_path))) for e in tb.read_events(p)
             if e.HasField("session_log")]
  assert [(m.step, m.session_log.status) for m in markers] == [(21, 1)]


@pytest.mark.parametrize("run", ["preempted", "crashed"])
def test_tensorboards_own_reader_agrees(run, request, tmp_path):
  """TensorBoard's EventAccumulator (the test extra `tensorboard`, which honours the purge
  marker) shows every scalar tag with each step once and the values `read_run` gives."""
  from tensorboard.backend.event_processing import event_accumulator as ea
  _replay(tmp_path, rec.load(str(request.getfixturevalue(run))))
  directory = tb.logdir(str(tmp_path))
  acc = ea.EventAccumulator(directory, size_guidance={ea.SCALARS: 0})
  acc.Reload()
  ours = tb.read_scalars(directory)
  assert set(acc.Tags()["scalars"]) == set(ours)
  for tag, series in ours.items():
    events = acc.Scalars(tag)
    assert [e.step for e in events] == sorted(series), tag
    assert {e.step: e.value for e in events} == series, tag


def test_resume_never_rewrites_a_step_already_on_disk(tmp_path):
  """A record re-sent at the resume step (the gate verdict after a from-scratch restart) is not
  written twice; without a start step, the sink only appends steps after each tag's last."""
  a = tb.TensorBoardSink(str(tmp_path), start_step=0)
  a.write({"event": "gate", "zone": "PLATEAU", "ratio": 12.5})
  a.write({"event": "train", "step": 5, "loss": 3.0})
  a.close()
  b = tb.TensorBoardSink(str(tmp_path), start_step=0)  # crashed before its first checkpoint
  b.write({"event": "gate", "zone": "PLATEAU", "ratio": 12.5})
  b.write({"event": "train", "step": 5, "loss": 2.5})
  b.close()
  c = tb.TensorBoardSink(str(tmp_path))
  c.write({"event": "train", "step": 5, "loss": 9.0})
  c.write({"event": "train", "step": 10, "loss": 2.0})
  c.close()
  got = tb.read_run(tb.logdir(str(tmp_path)))
  assert got["gate/ratio"] == {0: 12.5} and got["gate/zone"] == {0: "PLATEAU"}
  assert got["train/loss"] == {5: 2.5, 10: 2.0}


def test_config_text_and_hparams(tmp_path):
  sink = tb.TensorBoardSink(str(tmp_path), start_step=0)
  config = {"model": {"d_model": 32, "dtype": "float32"}, "lr": 1e-3, "tags": [1, 2]}
  sink.write_config(config)
  sink.close()
  got = tb.read_run(tb.logdir(str(tmp_path)))
  assert '"d_model": 32' in got["config"][0]
  tags = {v.tag for p in tb.event_files(tb.logdir(str(tmp_path))) for e in tb.read_events(p)
          for v in e.summary.value}
  assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= tags
  assert tb.flatten(config) == {"model.d_model": 32, "model.dtype": "float32", "lr": 1e-3,
                                "tags": "[1, 2]"}


def test_disabled_sink_writes_nothing(tmp_path):
  sink = tb.TensorBoardSink(str(tmp_path), enabled=False)
  sink.write({"event": "train", "step": 1, "loss": 1.0})
  sink.write_config({"a": 1})
  sink.close()
  assert not (tmp_path / tb.LOGDIR).exists()


def test_truncated_event_file_keeps_what_came_before(tmp_path):
  sink = tb.TensorBoardSink(str(tmp_path), start_step=0)
  for step in (1, 2, 3):
    sink.write({"event": "train", "step": step, "loss": float(step)})
  sink.close()
  (path,) = tb.event_files(tb.logdir(str(tmp_path)))
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:-7])  # the process died while writing the last record
  assert tb.read_scalars(tb.logdir(str(tmp_path)))["train/loss"] == {1: 1.0, 2: 2.0}


def test_the_writer_loads_without_torch_and_torch_still_imports():
  """tensorboardX's writer imports torch when installed (2.5 s of a run's start-up); the sink
  keeps it out, and leaves torch importable for code that wants it."""
  program = ("import sys; from train.run import tensorboard as tb; tb._summary_writer_class(); "
             "loaded = 'torch' in sys.modules; import torch; print(loaded, torch.__name__)")
  proc = helpers.start(["-c", program], helpers.child_env(), 120)
  assert proc.returncode == 0 and proc.stdout.split() == ["False", "torch"], proc.stderr[-2000:]


# What TensorBoard's Profile tab asks of its plugin (xprof, the `profile` extra), from a real
# TensorBoard on 127.0.0.1 serving sys.argv[1]: the runs it lists, each run's tools and hosts,
# and whether the trace viewer's data for a run shows the train step.
_PROFILE_TAB = """
import gzip, json, sys, urllib.parse, urllib.request
from tensorboard import default, program
tb = program.TensorBoard(default.get_plugins())
tb.configure(argv=[None, "--logdir", sys.argv[1], "--host", "127.0.0.1", "--port", "0",
                   "--load_fast=false"])
url = tb.launch().rstrip("/")
def get(route, **query):
  with urllib.request.urlopen(f"{url}/data/plugin/profile/{route}?"
                              f"{urllib.parse.urlencode(query)}", timeout=120) as r:
    body = r.read()
    return gzip.decompress(body) if r.headers.get("Content-Encoding") == "gzip" else body
out = {"runs": json.loads(get("runs")), "tools": {}, "hosts": {}, "step_in_trace": {}}
for run in out["runs"]:
  tools = out["tools"][run] = json.loads(get("run_tools", run=run))
  viewer = next(t for t in tools if t.startswith("trace_viewer"))
  hosts = out["hosts"][run] = [h["hostname"] for h in json.loads(get("hosts", run=run, tag=viewer))]
  out["step_in_trace"][run] = b"jit_train_step" in get("data", run=run, tag=viewer, host=hosts[0])
print(json.dumps(out))
"""


def test_profile_steps_write_a_trace_the_profile_plugin_lists(prepared_data, tmp_path):
  """--profile_steps=2:3 leaves one capture in WORKDIR/profile/plugins/profile/<time>/, and
  `tensorboard --logdir WORKDIR` with the pinned profile plugin lists it as the run
  `profile/<time>` (GET /data/plugin/profile/runs) and opens its trace, which holds the train
  step; a run without the flag writes no profile directory."""
  work = tmp_path / "run"
  res = helpers.run_main(helpers.FORCE, "--profile_steps=2:3", *helpers.tiny_flags(
      prepared_data, {"train_steps": 4, "schedule.warmup_steps": 1}), workdir=work)
  assert res.rc == 0, res.stderr[-3000:]
  [capture] = (work / "profile" / "plugins" / "profile").iterdir()
  assert list(capture.glob("*.xplane.pb")), sorted(capture.iterdir())
  assert not (helpers.REPO / "profile").exists()
  proc = helpers.start(["-c", _PROFILE_TAB, str(work)], helpers.child_env(), 180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  tab = json.loads(proc.stdout.splitlines()[-1])
  run = f"profile/{capture.name}"
  assert tab["runs"] == [run], tab
  assert "overview_page" in tab["tools"][run] and tab["hosts"][run], tab
  assert tab["step_in_trace"] == {run: True}, tab
  plain = tmp_path / "plain"
  res = helpers.run_main(helpers.FORCE, *helpers.tiny_flags(prepared_data, {
      "train_steps": 1, "schedule.warmup_steps": 1}), workdir=plain)
  assert res.rc == 0 and not (plain / "profile").exists(), res.stderr[-3000:]
