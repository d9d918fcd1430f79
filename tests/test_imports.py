"""Every module of the project imports (the fast tier's guarantee that nothing is broken at
import time, including modules only the slower tiers exercise), and a command module defines no
absl flags until its command runs (the harness in core/cli.py relies on it)."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
from absl import flags

import helpers

PACKAGES = ("core", "models", "gates", "train", "configs")


def _modules() -> list[str]:
  out = []
  for package in PACKAGES:
    pkg = importlib.import_module(package)
    out.append(package)
    out += [m.name for m in pkgutil.walk_packages(pkg.__path__, f"{package}.")]
  return sorted(out)


MODULES = _modules()


def test_the_walk_finds_every_python_file():
  """pkgutil sees every .py file of the packages (a folder without __init__.py would hide)."""
  files = {p.relative_to(helpers.REPO).with_suffix("").as_posix().replace("/", ".")
           for package in PACKAGES for p in (helpers.REPO / package).rglob("*.py")}
  files = {f.removesuffix(".__init__") for f in files}
  assert files == set(MODULES)


def _project_flag_modules() -> set[str]:
  """Modules of this project that have defined absl flags (libraries such as grain define
  their own on import; those are theirs)."""
  return {m for m in flags.FLAGS.flags_by_module_dict()
          if m.split(".")[0] in PACKAGES or m == "__main__"}


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_without_defining_flags(name):
  before = _project_flag_modules()
  importlib.import_module(name)
  assert _project_flag_modules() == before, f"importing {name} defined absl flags"
