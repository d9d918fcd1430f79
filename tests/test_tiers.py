"""The tier layout holds: a file's tier is its module-level marker (or none: fast), never a mix,
so a reader knows from the file what `pytest -m fast` runs."""
from __future__ import annotations

import ast

import conftest

import helpers

TESTS = helpers.REPO / "tests"


def _mark_names(node: ast.AST) -> list[str]:
  """Marker names in `pytest.mark.NAME` expressions anywhere under node."""
  return [n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
          and isinstance(n.value, ast.Attribute) and n.value.attr == "mark"]


def _tiers(path) -> tuple[list[str], list[str]]:
  """(module-level tier markers, tier markers on functions or classes) of a test file."""
  tree = ast.parse(path.read_text())
  module, local = [], []
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
      module += [m for m in _mark_names(node.value) if m in conftest.TIERS]
    elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
      for deco in node.decorator_list:
        local += [f"{node.name}: {m}" for m in _mark_names(deco) if m in conftest.TIERS]
  return module, local


def test_every_file_has_at_most_one_tier_and_only_at_module_level():
  bad = {}
  for path in sorted(TESTS.glob("test_*.py")):
    module, local = _tiers(path)
    if len(module) > 1 or local:
      bad[path.name] = (module, local)
  assert not bad, f"a test file's tier is one module-level pytestmark: {bad}"


def test_the_checker_sees_a_mixed_file(tmp_path):
  """The check above can fail: a function-level tier and two module tiers are found."""
  path = tmp_path / "test_mixed.py"
  path.write_text("import pytest\npytestmark = [pytest.mark.e2e, pytest.mark.hf]\n"
                  "@pytest.mark.multiprocess\ndef test_x():\n  pass\n")
  assert _tiers(path) == (["e2e", "hf"], ["test_x: multiprocess"])


def test_no_unknown_tier_like_marker():
  """A misspelled tier (`pytest.mark.e2ee`) would be caught by --strict-markers; keep it on."""
  cfg = (helpers.REPO / "setup.cfg").read_text()
  assert "--strict-markers" in cfg


def test_a_fast_test_cannot_start_a_python_child():
  """The conftest guard is live here (this file is fast): a Python child fails the test, which
  is how a command-running test in a fast file is found."""
  import subprocess
  import sys

  import pytest
  with pytest.raises(conftest.ChildProcessInFastTier, match="pytestmark = pytest.mark.e2e"):
    subprocess.run([sys.executable, "-c", "pass"], check=True)
  import helpers
  with pytest.raises(conftest.ChildProcessInFastTier, match="pytestmark = pytest.mark.e2e"):
    helpers.start(["-c", "pass"], helpers.child_env(), 60)
  assert subprocess.run(["true"]).returncode == 0  # other programs are fine (git, ...)
