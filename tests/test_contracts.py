"""Every contract in gates/contracts/ is well formed, and every falsifier names a test that exists.

Generic over the directory, so a new contract is checked the moment its YAML lands. A falsifier
whose test does not exist (yet) fails here on purpose: an unfalsifiable rule is not a contract.
"""
import ast
import pathlib
import re

import pytest
import yaml

from core import contracts

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PATHS = contracts.contract_paths()
# tests/<file>.py::<function> or tests/<file>.py::<Class>::<method>, optionally [param-id].
NODE_ID = re.compile(r"^(tests/[\w/]+\.py)((?:::\w+)+)(\[[^\]]*\])?$")


def _raw(path: pathlib.Path) -> dict:
  return yaml.safe_load(path.read_text(encoding="utf-8"))


def _node_ids() -> list[tuple[str, str, str]]:
  out = []
  for path in PATHS:
    try:
      falsifiers = _raw(path).get("falsifiers") or []
    except (yaml.YAMLError, AttributeError):
      continue  # reported by test_contract_is_well_formed
    for f in falsifiers:
      for node in contracts.falsifier_tests(f) if isinstance(f, dict) else []:
        out.append((path.name, str(f.get("id")), node))
  return out


def _defines(tree: ast.Module, names: list[str]) -> bool:
  """Whether the module defines names[0] (a test function) or names[0]::names[1] (a method)."""
  body = tree.body
  for i, name in enumerate(names):
    last = i == len(names) - 1
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef) if last else (ast.ClassDef,)
    node = next((n for n in body if isinstance(n, kinds) and n.name == name), None)
    if node is None:
      return False
    body = node.body
  return True


def test_the_chinchilla_contract_is_found():
  assert "chinchilla-gate-v1.yaml" in [p.name for p in PATHS]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_contract_is_well_formed(path):
  data = contracts.load_contract(path)
  assert re.fullmatch(r"\d+\.\d+\.\d+", data["version"])
  assert path.name == f"{data['contract']}-v{data['version'].split('.')[0]}.yaml", (
      "file name must be <contract>-v<major version>.yaml")
  ids = [i.get("id") for i in data["invariants"]]
  assert ids and all(re.fullmatch(r"INV-[A-Z0-9-]+-\d{3}", str(i)) for i in ids), ids
  changelog = data.get("changelog")
  if changelog is not None:
    assert data["version"] in [str(entry.get("version")) for entry in changelog], (
        "the changelog must have an entry for the current version")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_every_falsifier_names_a_test(path):
  falsifiers = _raw(path)["falsifiers"]
  ids = [f.get("id") for f in falsifiers]
  assert len(ids) == len(set(ids)), f"duplicate falsifier ids in {path.name}: {ids}"
  for f in falsifiers:
    assert re.fullmatch(r"FALSIFY-[A-Z0-9-]+-\d{3}", str(f.get("id"))), f
    assert f.get("description"), f"{f.get('id')} has no description"
    assert contracts.falsifier_tests(f), f"{f.get('id')} names no test"
    for node in contracts.falsifier_tests(f):
      assert NODE_ID.match(node), f"{f['id']}: {node!r} is not tests/<file>.py::<test>"


@pytest.mark.parametrize("contract, falsifier, node", _node_ids(),
                         ids=[f"{f}:{n}" for _, f, n in _node_ids()])
def test_falsifier_test_exists(contract, falsifier, node):
  match = NODE_ID.match(node)
  assert match, f"{contract} {falsifier}: {node!r} is not tests/<file>.py::<test>"
  file = REPO_ROOT / match[1]
  assert file.is_file(), f"{contract} {falsifier}: {match[1]} does not exist"
  names = match[2].split("::")[1:]
  assert names[-1].startswith("test") and all(c.startswith("Test") for c in names[:-1]), (
      f"{contract} {falsifier}: pytest would not collect {node}")
  tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
  assert _defines(tree, names), f"{contract} {falsifier}: {file.name} defines no {match[2][2:]}"
