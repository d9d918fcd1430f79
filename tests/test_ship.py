"""`pregate-ship` on real runs: GO against a contract the run meets (and the model card then
states it), NO-GO naming an unreachable target's row, WARN for a run whose gate was bypassed,
NO-GO at the fingerprint row for a checkpoint whose metadata lies (the command itself: its
table, exit 11 and ship.json)."""
from __future__ import annotations

import json
import shutil

import pytest

import helpers
import shared_runs
from gates import ship as ship_lib
from train.cli import ship

pytestmark = pytest.mark.hf

pytest.importorskip("transformers")
# Targets the tiny runs meet (val loss ~2.3, smoke acc ~0.4 at a 64-character context).
MET = {"val_loss": {"max": 2.6}, "val_bpb": {"max": 3.8},
       "tasks": {"smoke": {"metric": "acc", "min": 0.3, "tolerance": 0.02}}}


@pytest.fixture(scope="module")
def passing(prepared_data, shared_root, tmp_path_factory):
  return shared_runs.copy_of(shared_runs.tasks_passing(prepared_data, shared_root),
                             tmp_path_factory, "ship_passing")


def _contract(tmp_path, name: str = "ship-tiny", **fields) -> str:
  path = tmp_path / f"{name}.yaml"
  path.write_text(json.dumps({"contract": name, "version": "1.0.0", "targets": MET,
                              "generation": {"min_distinct_2": 0.3}, **fields}))
  return str(path)  # JSON is YAML


def _rows(report: str) -> dict[str, str]:
  """check -> status, from the printed table (its columns start where the header's do)."""
  lines = report.splitlines()
  head = next(i for i, line in enumerate(lines) if line.startswith("check "))
  at = lines[head].index("status")
  return {line[:at].strip(): line[at:].split()[0] for line in lines[head + 1:-1]}


def test_go_against_a_contract_the_run_meets(passing, tmp_path):
  code, report = ship.ship(str(passing), _contract(tmp_path))
  assert code == 0 and report.endswith("verdict: GO"), report
  rows = _rows(report)
  assert list(rows) == ["gate", "val_loss", "val_bpb", "task:smoke:acc", "fingerprint",
                        "export round trip", "generation", "install"]
  assert set(rows.values()) == {"PASS"}, report
  assert "-I -S` in an empty temp dir, PYTHONPATH cleared" in report
  record = json.loads((passing / "ship.json").read_text())
  assert record["verdict"] == "GO" and record["step"] == 450 and record["exit_code"] == 0
  from train.hf.export import export
  export(str(passing), str(tmp_path / "hf"))
  card = (tmp_path / "hf" / "README.md").read_text()
  assert ("- Ship verdict: **GO** (pregate-ship against contract ship-tiny v1.0.0, "
          f"{record['time']}; 8 checks, all passed).") in card


def test_unreachable_target_is_no_go_naming_its_row(passing, tmp_path):
  targets = {**MET, "val_loss": {"max": 0.5}}
  code, report = ship.ship(str(passing), _contract(tmp_path, targets=targets, install=False))
  assert code == 11 and report.endswith("verdict: NO-GO"), report
  rows = _rows(report)
  assert [k for k, v in rows.items() if v != "PASS"] == ["val_loss"], report
  assert "misses <= 0.5000" in next(line for line in report.splitlines()
                                    if line.startswith("val_loss "))


def test_bypassed_run_warns_naming_the_rules(trained_tiny, tmp_path_factory, tmp_path):
  """The suite's 20-step run (--force_under_provisioned, no tasks in its loop: the smoke task is
  drawn from its validation split); its greedy text is still one repeated character, so this
  contract leaves generation out."""
  run = shared_runs.copy_of(trained_tiny, tmp_path_factory, "ship_bypassed")
  targets = {"val_loss": {"max": 4.2}, "tasks": {"smoke": {"metric": "acc", "min": 0.2}}}
  code, report = ship.ship(str(run), _contract(tmp_path, targets=targets, generation=False,
                                               install=False))
  assert code == ship_lib.EXIT_CODES["WARN"] and report.endswith("verdict: WARN"), report
  rows = _rows(report)
  assert list(rows) == ["gate", "val_loss", "task:smoke:acc", "fingerprint",
                        "export round trip"], report
  assert [k for k, v in rows.items() if v != "PASS"] == ["gate"], report
  gate = next(line for line in report.splitlines() if line.startswith("gate "))
  assert "BYPASSED with --force_under_provisioned" in gate and "rules bypassed: " in gate
  assert not (run / "tasks").exists()


def test_lying_metadata_is_no_go_at_the_fingerprint_row(passing, tmp_path):
  lied = tmp_path / "lied"
  shutil.copytree(passing, lied)
  path = lied / "checkpoints" / "450" / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["model"]["rope_theta"] = meta["config"]["model"]["rope_theta"] = 500000.0
  path.write_text(json.dumps(meta))
  res = helpers.command("train.cli.ship", str(lied), f"--contract={_contract(tmp_path)}")
  assert res.rc == 11, res.stderr[-3000:]
  rows = _rows(res.stdout.strip())
  assert rows["fingerprint"] == "FAIL" and rows["gate"] == "PASS", res.stdout
  assert {k for k, v in rows.items() if v == "SKIP"} == {
      "val_loss", "val_bpb", "task:smoke:acc", "export round trip", "generation", "install"}
  assert "FingerprintMismatchError" in res.stdout and "model.rope_theta=500000.0" in res.stdout
  assert json.loads((lied / "ship.json").read_text())["verdict"] == "NO-GO"
