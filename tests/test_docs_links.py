"""The docs point at things that exist: every relative link and image in README.md,
BUILD_NOTES.md and docs/*.md names a file or directory, and every test a doc cites as
`tests/FILE.py::NAME` is defined there, so a rename or a move shows up here, not in a reader's
broken click or in a fault table that cites a test nobody runs."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "BUILD_NOTES.md", *(ROOT / "docs").glob("*.md")])

# [text](target) and ![alt](target); a target ends at whitespace (an optional "title" follows).
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...
# tests/test_x.py::test_name, optionally ::Class::test_name or [param]; also `::name` right after
# a cited file in the same cell (the fault table's `tests/a.py::x`, `::y` shorthand).
_CITED = re.compile(r"(tests/[\w/]+\.py)((?:::\w+)?)((?:`?,\s*`::\w+)*)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def relative_targets(text: str) -> list[str]:
  """Relative link targets of a markdown text, fragment stripped; code blocks are not links."""
  targets = []
  for target in _LINK.findall(_FENCE.sub("", text)):
    if _EXTERNAL.match(target) or target.startswith("#"):
      continue
    targets.append(target.split("#", 1)[0])
  return targets


def cited_tests(text: str) -> list[tuple[str, str]]:
  """(file, test name or "") for every `tests/FILE.py[::NAME]` a text cites."""
  out = []
  for path, name, more in _CITED.findall(text):
    out.append((path, name[2:]))
    out += [(path, extra) for extra in re.findall(r"::(\w+)", more)]
  return out


def test_docs_exist():
  assert ROOT / "README.md" in DOCS and len(DOCS) >= 3, DOCS


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_something(doc):
  missing = [t for t in relative_targets(doc.read_text(encoding="utf-8"))
             if not (doc.parent / t).exists()]
  assert not missing, f"{doc.relative_to(ROOT)} links to paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_tests_exist(doc):
  missing = []
  for path, name in cited_tests(doc.read_text(encoding="utf-8")):
    file = ROOT / path
    if not file.is_file():
      missing.append(path)
    elif name and not re.search(rf"^\s*(?:async\s+)?def {name}\(|^class {name}\b",
                                file.read_text(encoding="utf-8"), re.M):
      missing.append(f"{path}::{name}")
  assert not missing, f"{doc.relative_to(ROOT)} cites tests that do not exist: {missing}"


def test_the_checks_see_a_broken_link_and_a_missing_test():
  """The parsers above find what a doc could get wrong (else the tests would pass vacuously)."""
  text = ("![p](docs/x.png) [a](docs/usage.md#data) [b](https://x.org/a.md) [c](#top) "
          "[d](mailto:a@b.c) [e](../up.md \"title\")\n```\n[f](inside_code.md)\n```\n")
  assert relative_targets(text) == ["docs/x.png", "docs/usage.md", "../up.md"]
  assert cited_tests("`tests/test_a.py::test_b`, `::test_c`; `tests/test_d.py`") == [
      ("tests/test_a.py", "test_b"), ("tests/test_a.py", "test_c"), ("tests/test_d.py", "")]
