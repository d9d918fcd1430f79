"""The analytic memory model (gates/memory.py) against XLA's compiled figure of the same train
step, over a matrix of configurations on 8 fake CPU devices (tests/children/memory_matrix.py:
model size, remat policy, scanned or unrolled layers, grad_accum 1/4, fsdp 1/2/8, distillation
on and off). Compiled with the suite's fast-compile XLA flags (tests/conftest.py), which leave
every figure byte for byte as XLA's defaults give it (docs/benchmarks.md)."""
import json

import pytest

import helpers
import shared_runs
from core import contracts
from gates import device_memory

pytestmark = pytest.mark.e2e

# The bound the memory-fit contract states for the analytic model (0.2).
TOLERANCE = float(device_memory.parse(contracts.load(device_memory.CONTRACT)).tolerance)


def _measure(out) -> None:
  out.mkdir(parents=True)
  env = {**helpers.child_env(), **helpers.fake_devices(8), "JAX_PLATFORMS": "cpu"}
  proc = helpers.start([str(helpers.CHILDREN / "memory_matrix.py")], env, 600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  (out / "matrix.json").write_text(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def matrix(shared_root):
  """The child's rows, compiled once per test run whichever worker asks first."""
  out = shared_runs.once(shared_root, "memory_matrix", _measure)
  return json.loads((out / "matrix.json").read_text())


def test_matrix_spans_the_settings(matrix):
  rows = matrix["rows"]
  assert matrix["devices"] == 8 and len(rows) >= 12
  assert {r["remat"] for r in rows} == {"none", "full", "dots_saveable", "minimal_with_context"}
  assert {r["scan"] for r in rows} == {True, False}
  assert {r["grad_accum"] for r in rows} == {1, 4}
  assert {r["mesh"][1] for r in rows} == {1, 2, 8}
  assert {r["teacher_params"] > 0 for r in rows} == {True, False}
  assert len({r["n_params"] for r in rows}) >= 2


def test_estimate_within_20_percent_of_xla(matrix):
  misses = [f"{r['name']}: estimate {r['estimate']:,} vs XLA {r['xla']:,} ({r['error']:+.1%})"
            for r in matrix["rows"] if abs(r["error"]) > TOLERANCE]
  assert not misses, "; ".join(misses)
  for r in matrix["rows"]:  # each figure is the per-device program's, tens of MiB and up
    assert r["xla"] > 2 ** 24 and r["estimate"] > 2 ** 24, r
