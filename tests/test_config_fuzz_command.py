"""The config fuzz through the real command: the CLI parses the override (its own type check),
preflight refuses, and the workdir stays as it was; the last row is a huge but valid value, and
the run starts."""
from __future__ import annotations

import pytest
import test_main_cli

import helpers

pytestmark = pytest.mark.e2e

PASSING = test_main_cli.PASSING  # long enough that the Chinchilla gate passes unbypassed
# Through the real command: the CLI parses the override (its own type check), preflight
# refuses, and the workdir stays as it was. The last row is a huge but valid value: it starts.
CLI_ROWS = [("model.norm_eps", "nan", 2), ("optimizer.weight_decay", "nan", 2),
            ("seed", "-1", 2), ("data.corpus", "", 2), ("mesh.cpu_devices", "100000", 2),
            ("eval.eval_batches", "1000000000", 2), ("model.rope_theta", "inf", 2),
            ("eval.early_stop_min_delta", "1e30", 0)]


@pytest.mark.parametrize("field, value, rc", CLI_ROWS, ids=[r[0] for r in CLI_ROWS])
def test_cli_refuses_or_starts(field, value, rc, prepared_data, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "notes.txt").write_text("someone's files\n")
  before = helpers.snapshot(workdir)
  flags = helpers.tiny_flags(prepared_data, {**PASSING, "train_steps": 12} if rc == 0 else PASSING)
  if rc == 0:
    flags.append(helpers.FORCE)
  res = helpers.run_main(*flags, f"--config.{field}={value}", workdir=workdir, timeout=600)
  if rc:
    helpers.assert_one_line_error(res, field.split(".")[-1])
    assert helpers.snapshot(workdir) == before
  else:
    assert res.rc == 0 and (workdir / "run.json").exists(), res.stderr[-3000:]


def test_helpfull_documents_every_field():
  """--helpfull of the training command lists every declared field with its kind and doc."""
  from gates import config_schema
  proc = helpers.run_module("train.main", "--helpfull", timeout=120)
  text = " ".join((proc.stdout + proc.stderr).split())
  missing = [f.path for f in config_schema.FIELDS
             if f"{f.path}={f.default!r} ({f.type}" not in text or f.kind not in text]
  assert not missing, missing
