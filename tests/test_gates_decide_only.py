"""gates/ decides, nothing else: no file I/O, no printing, no command-line programs.

The import-linter contract `gates-decide-only` (setup.cfg) forbids the modules that do I/O or
parse flags; the builtins (open, print, input) and path methods need no import, so this scan
keeps them out, with no exception: the contracts' YAML is read by core.contracts and passed in.
Every console script lives in train/cli/.
"""
import ast
import configparser
import importlib
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GATES = REPO_ROOT / "gates"
BUILTINS = {"open", "print", "input", "exec", "eval", "__import__", "breakpoint"}
PATH_METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "open", "unlink", "mkdir",
                "rmdir", "rename", "replace", "touch", "iterdir", "glob", "rglob"}


def io_calls(source: str) -> list[str]:
  """'name (line N)' for each builtin I/O call or path-method call in `source`."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Call):
      continue
    func = node.func
    if isinstance(func, ast.Name) and func.id in BUILTINS:
      out.append(f"{func.id} (line {node.lineno})")
    elif isinstance(func, ast.Attribute) and func.attr in PATH_METHODS:
      out.append(f"{func.attr} (line {node.lineno})")
  return out


def test_the_scan_finds_io():
  source = ("import pathlib\nprint(open('x').read())\n"
            "pathlib.Path('y').write_text('z')\ndata = p.read_bytes()\n")
  assert sorted(io_calls(source)) == ["open (line 2)", "print (line 2)", "read_bytes (line 4)",
                                      "write_text (line 3)"]


@pytest.mark.parametrize("path", sorted(GATES.glob("*.py")), ids=lambda p: p.name)
def test_gates_module_does_no_io(path):
  calls = io_calls(path.read_text(encoding="utf-8"))
  assert not calls, f"gates/{path.name} does I/O: {calls}; move it to train/ and pass plain data"


def _console_scripts() -> dict[str, str]:
  parser = configparser.ConfigParser()
  parser.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
  lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict((part.strip() for part in line.split("=", 1)) for line in lines)


def test_every_console_script_lives_in_train_cli():
  scripts = _console_scripts()
  assert "pregate-plan" in scripts and "pregate-fit" in scripts
  for name, target in scripts.items():
    module, _, function = target.partition(":")
    # train.main only re-executes for the malloc tunable before importing train.cli.main.
    assert module.startswith("train.cli.") or target == "train.main:run", \
        f"{name} = {target}: commands live in train/cli/"
    assert callable(getattr(importlib.import_module(module), function)), f"{name} = {target}"
