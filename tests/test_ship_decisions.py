"""The ship verdict's decisions (gates/ship.py), from plain facts: each row's rule, the verdict
and its exit code, the contract's parsing; the shipped contract of the default experiment."""
from __future__ import annotations

import pytest

import helpers
from core import contracts
from core.errors import ContractError
from gates import ship
from train.hf import model_card

CONTRACT = helpers.REPO / "configs" / "ship_shakespeare_char.yaml"
BASE = {"contract": "c", "version": "1.0.0"}


def _parse(**fields) -> ship.ShipContract:
  return ship.parse({**BASE, **fields})


def test_the_shipped_contract_parses_with_margins_over_the_default_run():
  c = ship.parse(contracts.read_yaml(CONTRACT))
  assert c.name == "ship-shakespeare-char" and c.install and c.export_tolerance == 1e-4
  bounds = {t.name: (t.bound, t.tolerance) for t in c.targets}
  # The default run measures val loss 1.7491 (2.5234 bpb) and smoke acc 0.75 (docs/usage.md).
  assert bounds["val_loss"][0] > 1.7491 + 0.05 and bounds["val_bpb"][0] > 2.5234 + 0.05
  assert bounds["task:smoke:acc"][0] < 0.75 - 0.1 and bounds["task:smoke:acc"][1] > 0


def test_strict_and_loose_targets():
  strict = ship.Target("val_loss", 1.85, at_least=False)
  assert ship.target_row(strict, 1.7491).status == ship.PASS
  assert ship.target_row(strict, 1.85).status == ship.PASS  # the bound itself holds
  row = ship.target_row(strict, 1.86)
  assert row.status == ship.FAIL and "strict target" in row.detail
  loose = ship.Target("task:smoke:acc", 0.6, at_least=True, tolerance=0.05)
  assert ship.target_row(loose, 0.75).status == ship.PASS
  assert ship.target_row(loose, 0.58).status == ship.WARN
  assert "within the tolerance" in ship.target_row(loose, 0.58).detail
  assert ship.target_row(loose, 0.54).status == ship.FAIL
  not_measured = ship.target_row(strict, None, "DataError: no eval batches")
  assert not_measured.status == ship.FAIL and "DataError" in not_measured.detail
  assert ship.target_row(strict, float("nan")).status == ship.FAIL


def test_gate_row():
  passed = {"passed": True, "bypassed": False, "zone": "COMPUTE_OPTIMAL",
            "contract": "chinchilla-gate", "contract_version": "1.3.0"}
  assert ship.gate_row(passed).status == ship.PASS
  bypassed = {"passed": False, "bypassed": True, "zone": "DEGENERATION",
              "bypassed_rules": ["effective_floor", "epoch_limit"]}
  row = ship.gate_row(bypassed)
  assert row.status == ship.WARN and "effective_floor, epoch_limit" in row.detail
  assert ship.gate_row(bypassed, ship.NO_GO).status == ship.FAIL
  assert ship.gate_row(None).status == ship.WARN  # a stamped or imported checkpoint
  assert ship.gate_row({"passed": False, "bypassed": False}).status == ship.FAIL


def test_fingerprint_export_generation_install_rows():
  assert ship.fingerprint_row(0.0).status == ship.PASS
  assert ship.fingerprint_row(None).status == ship.WARN
  lie = ship.fingerprint_row(None, "FingerprintMismatchError: ...")
  assert lie.status == ship.FAIL and lie.check == "fingerprint"
  assert ship.export_row(2e-6, 384, 1e-4, True).status == ship.PASS
  assert ship.export_row(2e-3, 384, 1e-4, True).status == ship.FAIL
  assert ship.export_row(2e-6, 384, 1e-4, False).status == ship.FAIL
  varied = [[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]]
  assert ship.generation_row(varied, varied, 0.5).status == ship.PASS
  flat = ship.generation_row([[7] * 6], varied, 0.5)
  assert flat.status == ship.FAIL and "repeat one token" in flat.detail
  loop = [[1, 2, 1, 2, 1, 2, 1, 2]]  # distinct-2: 2 of 7 bigrams
  assert ship.distinct(loop[0]) == pytest.approx(2 / 7)
  assert ship.generation_row(varied, loop, 0.5).status == ship.FAIL
  assert ship.generation_row(loop, varied, 0.5).status == ship.PASS  # greedy loops: reported
  assert ship.install_row(True, "ok").status == ship.PASS
  assert ship.install_row(None, "no interpreter").status == ship.SKIP


def test_verdict_and_exit_codes():
  ok, warn = ship.Row("a", ship.PASS, ""), ship.Row("b", ship.WARN, "")
  fail, skip = ship.Row("c", ship.FAIL, ""), ship.Row("d", ship.SKIP, "")
  assert ship.verdict([ok, ok]) == ship.GO
  assert ship.verdict([ok, warn]) == ship.verdict([ok, skip]) == ship.WARN
  assert ship.verdict([warn, fail, skip]) == ship.NO_GO
  assert ship.EXIT_CODES == {"GO": 0, "WARN": 10, "NO-GO": 11}


def test_contract_parsing():
  c = _parse(targets={"val_loss": {"max": 2.0}, "tasks": {"qa": {"min": 0.5, "metric":
                                                                  "acc_norm", "path": "q.jsonl",
                                                                  "tolerance": 0.1}}},
             gate={"bypassed": "no-go"}, install=False, step=400)
  assert [t.name for t in c.targets] == ["val_loss", "task:qa:acc_norm"]
  assert c.targets[1].task == "qa" and c.targets[1].path == "q.jsonl"
  assert c.bypassed_gate == ship.NO_GO and not c.install and c.step == 400
  assert _parse().targets == () and _parse().step == "latest" and _parse().generation
  assert not _parse(generation=False).generation


@pytest.mark.parametrize("fields,needle", [
    ({"contract": ""}, "`contract` (its name) and `version`"),
    ({"targets": {"val_loss": {"min": 1.0}}}, "targets.val_loss must be a mapping with `max`"),
    ({"targets": {"val_loss": {"max": "low"}}}, "targets.val_loss.max must be a number"),
    ({"targets": {"val_loss": {"max": 2, "tolerance": -1}}}, "tolerance must be a number >= 0"),
    ({"targets": {"perplexity": {"max": 2}}}, "targets may hold"),
    ({"targets": {"tasks": {"qa": {"min": 0.5, "metric": "f1"}}}}, "metric must be one of"),
    ({"gate": {"bypassed": "ignore"}}, "gate.bypassed must be warn or no-go"),
    ({"generation": {"prompts": 0}}, "generation.prompts must be an integer >= 1"),
    ({"generation": "off"}, "`generation` a mapping or false"),
    ({"install": "yes"}, "install must be true or false"),
    ({"step": "newest"}, "step must be latest, best or a step"),
    ({"targts": {}}, "unknown keys ['targts']")])
def test_bad_contract_is_one_line(fields, needle):
  with pytest.raises(ContractError) as err:
    _parse(**fields)
  assert needle in str(err.value) and "\n" not in str(err.value)


def test_unreadable_contract_file_is_one_line(tmp_path):
  from train.cli import ship as ship_cli
  with pytest.raises(ContractError, match="cannot read ship contract"):
    ship_cli.ship(str(tmp_path), str(tmp_path / "missing.yaml"))
  (tmp_path / "list.yaml").write_text("- a\n- b\n")
  with pytest.raises(ContractError, match="must be a YAML mapping, got list"):
    ship_cli.ship(str(tmp_path), str(tmp_path / "list.yaml"))


def test_model_card_states_the_ship_verdict():
  record = {"verdict": "WARN", "time": "2026-05-26T10:00:00Z", "step": 7,
            "contract": {"name": "ship-x", "version": "1.0.0"},
            "rows": [{"check": "gate", "status": "WARN", "detail": ""},
                     {"check": "val_loss", "status": "PASS", "detail": ""}]}
  assert model_card._ship(record) == [
      "- Ship verdict: **WARN** (pregate-ship against contract ship-x v1.0.0, "
      "2026-05-26T10:00:00Z; 2 checks, not passed: gate WARN)."]
  assert model_card._ship(None) == []
