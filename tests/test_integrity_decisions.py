"""The pure decisions behind restore integrity, on plain data (fast): fingerprint comparison and its
tolerance, the stamp's held-out proof, and the config rules' one-line messages."""
from __future__ import annotations

import copy
import math

import pytest

from configs import shakespeare_char
from gates import arch_match, config_sanity

MODEL = {"rope_theta": 10000.0, "norm_eps": 1e-5, "dtype": "float32", "n_heads": 4,
         "n_kv_heads": 2}


def _record(value: float = -4.0, dtype: str = "float32") -> dict:
  rows = [[value] * 3 for _ in range(2)]
  return {"probe": {"seed": 1, "batch": 2, "length": 3}, "dtype": dtype,
          "target_logp": rows, "max_logp": copy.deepcopy(rows)}


def test_fingerprint_within_tolerance_passes_and_beyond_is_refused():
  rec = _record()
  assert arch_match.check_fingerprint("ckpt", rec, _record(-4.0 * (1 + 5e-6)), MODEL) < 1e-4
  with pytest.raises(arch_match.FingerprintMismatchError) as e:
    arch_match.check_fingerprint("ckpt", rec, _record(-4.0 * (1 + 1e-3)), MODEL)
  assert isinstance(e.value, arch_match.ArchitectureMismatchError) and e.value.exit_code == 2
  line = str(e.value)
  assert "the metadata does not describe the tensors" in line and "\n" not in line
  for name in ("model.rope_theta=10000.0", "model.norm_eps", "model.dtype", "n_heads/n_kv_heads"):
    assert name in line, line


def test_fingerprint_tolerance_is_the_tighter_dtype():
  """A bf16 record claimed as fp32 (or the reverse) is judged at fp32's tolerance."""
  rec = _record(dtype="bfloat16")
  got = _record(-4.0 * (1 + 1e-2))
  assert arch_match.check_fingerprint("c", rec, got, {**MODEL, "dtype": "bfloat16"}) > 1e-3
  with pytest.raises(arch_match.FingerprintMismatchError):
    arch_match.check_fingerprint("c", rec, got, MODEL)


@pytest.mark.parametrize("edit", [lambda r: r.pop("max_logp"),
                                  lambda r: r["target_logp"][0].pop(),
                                  lambda r: r.update(dtype="int8"),
                                  lambda r: r["probe"].update(length=10**6),
                                  lambda r: r["target_logp"][1].__setitem__(0, "x")])
def test_malformed_fingerprint_is_refused(edit):
  rec = _record()
  edit(rec)
  assert arch_match.fingerprint_problems(rec)
  with pytest.raises(arch_match.FingerprintMismatchError, match="malformed"):
    arch_match.check_fingerprint("c", rec, _record(), MODEL)


def test_nan_measurement_never_matches():
  assert arch_match.fingerprint_difference(_record(), _record(math.nan)) == math.inf


def test_stamp_proof():
  ok = arch_match.stamp_proof_problems(2.0, 65, None, 0.05, {"model.rope_theta=5e5": 2.01})
  assert ok == []
  near_random = arch_match.stamp_proof_problems(0.96 * math.log(65), 65, None, 0.05, {})
  assert "random level" in near_random[0]
  far = arch_match.stamp_proof_problems(2.2, 65, 2.0, 0.05, {})
  assert "far from the stated 2.0000" in far[0]
  better = arch_match.stamp_proof_problems(2.2, 65, None, 0.05,
                                           {"model.n_heads/n_kv_heads=4/2": 1.9})
  assert "model.n_heads/n_kv_heads=4/2 (loss 1.9000" in better[0]


def test_every_rule_message_is_one_line_naming_the_field():
  cfg = shakespeare_char.get_config().to_dict()
  assert config_sanity.problems(cfg) == []
  for path in config_sanity.FIELDS:
    bad = copy.deepcopy(cfg)
    *parents, leaf = path.split(".")
    node = bad
    for p in parents:
      node = node[p]
    node[leaf] = math.nan
    found = config_sanity.problems(bad)
    assert len(found) == 1 and path in found[0] and "\n" not in found[0], (path, found)
