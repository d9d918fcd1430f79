"""The Chinchilla gate at the command line: a refusal happens before any XLA compile and before
anything is written, with every number needed to fix it; a bypass trains and is recorded in
gate.json, metrics.jsonl and every checkpoint."""
import json
import re

import pytest

import helpers
from configs import nanogpt_shakespeare_char_cpu, shakespeare_char
from gates.chinchilla import COMPUTE_OPTIMAL, DEGENERATION, PLATEAU, ChinchillaGateError, ratio_text
from train.run.preflight import preflight

pytestmark = pytest.mark.e2e


# The TINY model has N = 11,392: 10 steps -> D/N = 0.11 (DEGENERATION), 1,000 steps -> D/N =
# 11.2 (PLATEAU); the rule needs 1,780.
DEGENERATE_STEPS, PLATEAU_STEPS = 10, 1000


def _expected_verdict(data_dir, steps, tmp_path):
  """The verdict preflight computes in-process for the same config (bypassed, so it returns)."""
  config = helpers.tiny_config(data_dir, {"train_steps": steps})
  plan = preflight(config, str(tmp_path / "in-process-probe"), force=True)
  counts, verdict = plan.counts, plan.verdict
  assert verdict.n_params == counts.total and verdict.n_non_embedding == counts.non_embedding
  return verdict


def _assert_refused(res, verdict, zone):
  """Exit 3 (not a crash's 1 or bad input's 2), one explanatory line, zero compiles."""
  out = res.stdout + res.stderr
  assert res.rc == 3, out[-3000:]
  assert "Traceback" not in out
  assert res.compiles == 0, f"{res.compiles} backend compiles before the refusal"
  assert verdict.zone == zone
  [line] = res.error_lines
  assert line.startswith("ERROR: ChinchillaGateError:"), line
  for needle in (zone, f"N = {verdict.n_params:,} parameters",
                 f"({verdict.n_non_embedding:,} non-embedding)", f"D = {verdict.tokens:,} tokens",
                 f"D/N = {ratio_text(verdict.tokens, verdict.n_params)}",
                 f"train_steps >= {verdict.steps_needed:,}", helpers.FORCE):
    assert needle in line, f"{needle!r} missing from: {line}"


def test_refusal_before_compile_and_workdir_untouched(prepared_data, tmp_path):
  flags = helpers.tiny_flags(prepared_data, {"train_steps": DEGENERATE_STEPS})
  verdict = _expected_verdict(prepared_data, DEGENERATE_STEPS, tmp_path)

  # (a) A workdir that does not exist (nor its parent) is not created.
  missing = tmp_path / "not-yet" / "run"
  res = helpers.run_main(*flags, workdir=missing, count_compiles=True)
  _assert_refused(res, verdict, DEGENERATION)
  assert not missing.parent.exists()

  # (b) An existing workdir with files (a previous run's, say) is left byte-identical.
  existing = tmp_path / "existing"
  (existing / "checkpoints" / "7").mkdir(parents=True)
  (existing / "metrics.jsonl").write_text('{"event": "gate"}\n')
  (existing / "notes.txt").write_bytes(b"keep me\x00\xff")
  (existing / "checkpoints" / "7" / "blob").write_bytes(bytes(range(256)) * 8)
  before = helpers.snapshot(existing)
  res = helpers.run_main(*flags, workdir=existing, count_compiles=True)
  _assert_refused(res, verdict, DEGENERATION)
  assert helpers.snapshot(existing) == before


def test_plateau_refused_before_compile(prepared_data, tmp_path):
  flags = helpers.tiny_flags(prepared_data, {"train_steps": PLATEAU_STEPS})
  verdict = _expected_verdict(prepared_data, PLATEAU_STEPS, tmp_path)
  assert 10 <= verdict.tokens / verdict.n_params < 20
  workdir = tmp_path / "run"
  res = helpers.run_main(*flags, workdir=workdir, count_compiles=True)
  _assert_refused(res, verdict, PLATEAU)
  assert not workdir.exists()


def test_bypass_trains_and_records_verdict(prepared_data, tmp_path):
  flags = helpers.tiny_flags(prepared_data)  # 30 steps: D/N = 0.33, DEGENERATION
  verdict = _expected_verdict(prepared_data, helpers.TINY["train_steps"], tmp_path)
  workdir = tmp_path / "run"
  res = helpers.run_main(*flags, helpers.FORCE, workdir=workdir, count_compiles=True)
  assert res.rc == 0, res.stderr[-3000:]
  assert res.compiles > 0  # the counter works, so the refusals' zero means something
  assert "Traceback" not in res.stderr

  warnings = [l for l in res.stderr.splitlines() if "chinchilla gate bypassed" in l]
  assert len(warnings) == 1, res.stderr[-3000:]
  assert re.match(r"^W\d{4} ", warnings[0]), warnings[0]  # logged at WARNING level
  assert DEGENERATION in warnings[0]
  ratio = ratio_text(verdict.tokens, verdict.n_params)  # "0.33": truncated, as the gate prints
  assert f"D/N = {ratio}" in warnings[0]
  assert f"(D/N = {ratio}, {DEGENERATION})" in res.stderr  # the loop's summary agrees

  gate = json.loads((workdir / "gate.json").read_text())
  assert gate["bypassed"] is True and gate["passed"] is False and gate["proceeds"] is True
  assert gate["zone"] == DEGENERATION and gate["bypassed_rules"] == ["effective_floor"]
  # D, D' and the epochs per source are on record (contract v1.2.0, INV-CHINCHILLA-002).
  [source] = gate["sources"]
  assert source["unique_tokens"] == verdict.sources[0].unique_tokens > 0
  assert source["epochs"] == pytest.approx(verdict.tokens / source["unique_tokens"])
  assert gate["effective_tokens"] == verdict.effective_tokens == verdict.tokens  # no repeats
  assert (gate["n_params"], gate["tokens"]) == (verdict.n_params, verdict.tokens)
  assert not list(workdir.glob("gate.json.tmp*"))

  first = helpers.read_jsonl(workdir / "metrics.jsonl")[0]
  assert first["event"] == "gate"
  assert {k: first[k] for k in gate} == gate

  steps = helpers.checkpoint_steps(workdir)
  assert steps and steps[-1] == helpers.TINY["train_steps"]
  for step in steps:
    meta = helpers.checkpoint_meta(workdir, step)
    assert meta["gate"]["bypassed"] is True, step
    assert meta["gate"]["zone"] == DEGENERATION, step
    assert meta["gate"]["sources"] == gate["sources"], step
    assert meta["gate"]["effective_tokens"] == gate["effective_tokens"], step


def test_compute_optimal_config_passes_without_bypass(tmp_path):
  """configs/shakespeare_char.py is sized to pass on effective tokens: it must never need the
  flag."""
  workdir = tmp_path / "run"
  plan = preflight(shakespeare_char.get_config(), str(workdir), force=False)
  counts, verdict = plan.counts, plan.verdict
  assert verdict.passed and not verdict.bypassed
  assert verdict.zone == COMPUTE_OPTIMAL
  assert verdict.effective_tokens >= 20 * counts.total and verdict.sources[0].epochs <= 4
  assert not workdir.exists()


def test_nanogpt_config_refused_unless_forced(tmp_path):
  """The nanoGPT comparison config is under-provisioned on purpose (D/N ~ 1.9)."""
  config = nanogpt_shakespeare_char_cpu.get_config()
  workdir = tmp_path / "run"
  with pytest.raises(ChinchillaGateError) as info:
    preflight(config, str(workdir), force=False)
  assert info.value.exit_code == 3
  assert info.value.verdict.zone == DEGENERATION
  assert DEGENERATION in str(info.value) and helpers.FORCE in str(info.value)
  verdict = preflight(config, str(workdir), force=True).verdict
  assert verdict.bypassed and verdict.proceeds and verdict.zone == DEGENERATION
  assert verdict.bypassed_rules == ("effective_floor",) and verdict.steps_needed is None
  assert not workdir.exists()
