"""The isolation proof on sharded meshes (8 fake CPU devices): with the parameters laid out as
training lays them out (FSDP with scanned layers; data x FSDP x tensor), doc B's logits in a
window [doc A | doc B] equal doc B alone within 1e-5, and no token of doc A moves them."""
import json

import pytest

import helpers
import shared_runs

pytestmark = pytest.mark.e2e

MESHES = ["1x8x1-scan", "2x2x2"]


def _measure(out) -> None:
  out.mkdir(parents=True)
  env = {**helpers.child_env(), **helpers.fake_devices(8), "JAX_PLATFORMS": "cpu"}
  proc = helpers.start([str(helpers.CHILDREN / "packed_isolation.py"), *MESHES], env, 600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  (out / "figures.json").write_text(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def runs(shared_root):
  """The child's figures, measured once per test run whichever worker asks first."""
  out = shared_runs.once(shared_root, "packed_isolation", _measure)
  return json.loads((out / "figures.json").read_text())


@pytest.mark.parametrize("mesh", MESHES)
def test_doc_b_is_isolated_on_a_sharded_mesh(runs, mesh):
  got = runs[mesh]
  assert got["devices"] == 8
  assert got["max_diff"] <= 1e-5, got
  assert got["unchanged"], got
