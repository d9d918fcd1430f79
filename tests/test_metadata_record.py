"""The checkpoint metadata is a typed record outside train/ckpt/metadata.py.

Readers get `metadata.Metadata` and use its attributes; the JSON form is produced and parsed in
the metadata module only. An AST scan keeps it so: no module of train/ or gates/ other than
the metadata module subscripts, `.get()`s or `in`-tests a string key on a metadata object
(a name or attribute spelled like one: meta, md, recorded_meta, resumed, loaded, run_meta),
and none reads the metadata file itself. A record read and written again is the same JSON.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from train.ckpt import metadata

REPO = Path(__file__).resolve().parents[1]
OWNER = REPO / "train" / "ckpt" / "metadata.py"
META_NAMES = {"meta", "md", "recorded_meta", "resumed", "loaded", "run_meta"}


def _name(node: ast.AST) -> str | None:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return node.attr
  return None


def string_key_reads(source: str) -> list[tuple[int, str]]:
  """(line, what) for every string-key access on a metadata-named object."""
  out = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Subscript) and _name(node.value) in META_NAMES \
        and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
      out.append((node.lineno, f"{_name(node.value)}[{node.slice.value!r}]"))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
        and node.func.attr in ("get", "pop", "setdefault") \
        and _name(node.func.value) in META_NAMES and node.args \
        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
      out.append((node.lineno, f"{_name(node.func.value)}.{node.func.attr}("
                  f"{node.args[0].value!r})"))
    elif isinstance(node, ast.Compare) and any(isinstance(o, (ast.In, ast.NotIn))
                                               for o in node.ops) \
        and any(_name(c) in META_NAMES for c in node.comparators) \
        and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
      out.append((node.lineno, f"{node.left.value!r} in {_name(node.comparators[0])}"))
  return out


def _modules() -> list[Path]:
  return [p for root in ("train", "gates") for p in sorted((REPO / root).rglob("*.py"))
          if p != OWNER]


def test_no_string_key_metadata_reads_outside_the_metadata_module():
  found = [f"{p.relative_to(REPO)}:{line}: {what}" for p in _modules()
           for line, what in string_key_reads(p.read_text())]
  assert not found, "read the typed record's attributes instead:\n" + "\n".join(found)


def test_only_the_metadata_module_opens_the_metadata_file():
  found = [str(p.relative_to(REPO)) for p in _modules()
           if '"meta", "metadata"' in p.read_text() or "'meta', 'metadata'" in p.read_text()]
  assert not found, found


@pytest.mark.parametrize("bad", [
    'x = meta["model"]', 'x = restored.meta.get("tokenizer")', 'ok = "stamped" in md',
    'x = recorded_meta.get("distill", {})'])
def test_the_scan_finds_each_spelling(bad):
  assert string_key_reads(bad), bad


def test_record_round_trips_the_json_layout():
  raw = {"schema": metadata.SCHEMA, "model": {"d_model": 32}, "step": 3, "val_loss": None,
         "data": {"tokenizer_fingerprint": "ab"}, "future_field": [1, 2]}
  record = metadata.Metadata.from_json(raw)
  assert record.step == 3 and record.val_loss is None and record.has("val_loss")
  assert not record.has("gate") and record.gate is None
  assert record.recorded_tokenizer_fingerprint == "ab"
  assert json.dumps(record.to_json(), sort_keys=True) == json.dumps(raw, sort_keys=True)


def test_require_refuses_a_record_without_a_model():
  with pytest.raises(metadata.arch_match.MissingMetadataError):
    metadata.require(metadata.Metadata.from_json({"step": 1}), "x/1")
  with pytest.raises(metadata.arch_match.MissingMetadataError):
    metadata.require(None, "x/1")
