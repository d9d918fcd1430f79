"""The test selections README documents work: each `-m` expression it shows (and each tier)
selects test files, judged with pytest's own marker-expression parser over every file's tier
(its module-level marker, tests/test_tiers.py), so a renamed marker cannot leave a documented
command selecting nothing."""
from __future__ import annotations

import re

import conftest
import pytest
import test_tiers
from _pytest.mark.expression import Expression

import helpers

README = (helpers.REPO / "README.md").read_text()
TIER_OF = {path.name: (test_tiers._tiers(path)[0] or [conftest.FAST])[0]
           for path in sorted(test_tiers.TESTS.glob("test_*.py"))}


def _documented() -> list[str]:
  """`-m "EXPR"` selections in README, and `-m WORD` on the lines that run pytest."""
  out = set(re.findall(r'-m "([^"]+)"', README))
  for line in README.splitlines():
    if "pytest" in line:
      out |= set(re.findall(r"-m ([A-Za-z_]+)", line))
  return sorted(out - {"pytest", "venv", "train"})


def _selected(expr: str) -> list[str]:
  compiled = Expression.compile(expr)
  return [name for name, tier in TIER_OF.items()
          if compiled.evaluate(lambda marker, tier=tier, **kw: marker == tier)]


def test_readme_documents_the_fast_tier_and_others():
  assert "fast" in _documented() and len(_documented()) >= 3, _documented()


@pytest.mark.parametrize("expr", sorted({*_documented(), *conftest.TIERS, conftest.FAST}))
def test_selection_selects_some_files_not_all(expr):
  assert 0 < len(_selected(expr)) < len(TIER_OF), f"-m {expr!r} selects {_selected(expr)}"


def test_the_fast_tier_is_the_unmarked_files():
  assert "test_tiers.py" in _selected("fast") and "test_faults.py" not in _selected("fast")
  assert _selected("no_such_tier") == []
