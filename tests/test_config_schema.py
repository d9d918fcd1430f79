"""Each config field is declared once (gates/config_schema.py, models/config.py's ModelConfig):
every field states its type, resume kind and doc; the defaults, overrides, rules, kinds, typed
view and documentation all come from that declaration."""
from __future__ import annotations

import dataclasses
import typing

import pytest
from absl import flags
from ml_collections import config_flags

from configs import base, shakespeare_char
from core import config_fields
from core.config_fields import KINDS, field
from gates import config_sanity, config_schema, ownership
from models.config import ModelConfig


def declaration_problems(section: type) -> list[str]:
  """What a section's declaration lacks: a field() spec, a type the rules know, a resume kind,
  a one-line doc, a default its own rule accepts."""
  try:
    declared = list(config_fields.fields(section))
  except TypeError as e:  # no field() spec, or a type the rules do not know
    return [str(e)]
  out = []
  for f in declared:
    if f.kind not in KINDS:
      out.append(f"{f.path}: kind {f.kind!r} is not one of {KINDS}")
    if not f.doc.strip() or "\n" in f.doc:
      out.append(f"{f.path}: needs a one-line doc")
    if f.problem(f.default):
      out.append(f"{f.path}: its default is refused: {f.problem(f.default)}")
  return out


def test_every_field_declares_type_kind_and_doc():
  """Config holds every section (ModelConfig's too); a field lacking a type fails earlier, at
  import, with the same message (test_a_field_lacking_type_kind_or_doc_is_found)."""
  assert declaration_problems(config_schema.Config) == []


def test_a_field_lacking_type_kind_or_doc_is_found():
  @dataclasses.dataclass(frozen=True)
  class Broken:
    ok: int = field(1, "safe", "a count", low=0)
    no_kind: int = field(1, "", "a count")
    no_doc: str = field("x", "identity", "")
    bad_default: int = field(-1, "safe", "a count", low=0)

  @dataclasses.dataclass(frozen=True)
  class Untyped:
    anything: typing.Any = field(1, "safe", "a value of no declared type")

  @dataclasses.dataclass(frozen=True)
  class Undeclared:
    bare: int = 3

  found = declaration_problems(Broken)
  assert [p.split(":")[0] for p in found] == ["no_kind", "no_doc", "bad_default"], found
  assert "not typing.Any" in declaration_problems(Untyped)[0]
  assert "Undeclared.bare: declare it" in declaration_problems(Undeclared)[0]


def test_defaults_are_the_declarations():
  flat = ownership.flatten(base.get_config().to_dict())
  declared = {f.path: f.default for f in config_schema.FIELDS if f.type != "mapping"}
  assert flat == declared
  assert base.get_config().data.sources.to_dict() == {}
  assert config_sanity.problems(base.get_config().to_dict()) == []


def test_every_field_is_overridable_from_the_command_line():
  """`--config.section.field=value` for every declared field, through ml_collections' own flag
  parser (a placeholder(bool) and an empty string included)."""
  def parse(argv: list[str]) -> dict:
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    values(argv)
    return ownership.flatten(values.config.to_dict())

  overrides = {f.path: f.default for f in config_schema.FIELDS if f.type != "mapping"}
  overrides.update({"model.scan_layers": True, "data.document_masking": False,
                    "data.document_positions": True, "model.d_model": 64, "data.corpus": "",
                    "optimizer.lr": 0.5, "model.attention": "einsum"})
  argv = ["prog", f"--config={base.__file__}"] + [
      f"--config.{path}={value}" for path, value in overrides.items()]
  assert parse(argv) == overrides
  with pytest.raises(flags.IllegalFlagValueError):
    parse(["prog", f"--config={base.__file__}", "--config.model.scan_layers=maybe"])


def test_a_mixture_config_file_and_its_source_overrides_still_parse(tmp_path):
  """data.sources is a nested ConfigDict set by a config file; its entries are overridable."""
  path = tmp_path / "mix.py"
  path.write_text("from ml_collections import ConfigDict\nfrom configs import base\n\n\n"
                  "def get_config():\n  c = base.get_config()\n  c.data.sources = ConfigDict("
                  "{'a': {'corpus': 'x.txt', 'weight': 0.7}, 'b': {'corpus': 'y.txt', "
                  "'weight': 0.3}})\n  return c\n")
  argv = ["prog", f"--config={path}", "--config.data.sources.a.weight=0.5"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  cfg = values.config.to_dict()
  assert cfg["data"]["sources"]["a"] == {"corpus": "x.txt", "weight": 0.5}
  assert config_schema.view(cfg).data.sources["b"]["weight"] == 0.3
  assert config_sanity.problems(cfg) == []


def test_typed_view_round_trips():
  cfg = shakespeare_char.get_config().to_dict()
  view = config_schema.view(cfg)
  assert isinstance(view.model, ModelConfig) and view.model.d_model == 64
  assert view.batch.seq_len == 128 and view.data.val_split == "tail"
  assert dataclasses.asdict(view) == cfg
  with pytest.raises(TypeError, match="unknown field"):
    config_schema.view({**cfg, "batch": {**cfg["batch"], "seq_lenn": 1}})


def test_kinds_come_from_the_declaration():
  assert config_schema.kind_of("model.d_model") == "identity"
  assert config_schema.kind_of("model.attention") == "execution"
  assert config_schema.kind_of("data.sources.web.weight") == "identity"  # its field's kind
  assert config_schema.kind_of("model.retired_field") == "identity"  # its section's strictest
  assert config_schema.kind_of("logging.retired_field") == "safe"
  old, new = base.get_config().to_dict(), base.get_config().to_dict()
  new["model"].update(attention="einsum", d_model=64)
  new["mesh"]["data"] = 2
  diff = ownership.classify(old, new)
  assert [d.split(":")[0] for d in diff["identity"]] == ["model.d_model"]
  assert [d.split(":")[0] for d in diff["safe"]] == ["mesh.data", "model.attention"]


def test_describe_documents_every_field():
  lines = config_schema.describe().splitlines()
  assert len(lines) == len(config_schema.FIELDS)
  for f, line in zip(config_schema.FIELDS, lines):
    assert line.startswith(f.path + " ") and f.kind in line and line.endswith(f.doc), line
  assert "model.attention" in next(line for line in lines if "auto | einsum | xla | cudnn" in line)


@pytest.mark.parametrize("spec, ok", [("", True), ("2:3", True), ("5:5", True), ("1:10", True),
                                      ("3:2", False), ("0:2", False), ("2:11", False),
                                      ("a:b", False), ("2", False), ("2:3:4", False)])
def test_profile_steps_must_be_a_window_inside_the_run(spec, ok):
  """logging.profile_steps is A:B with 1 <= A <= B <= train_steps (here 10), or ''."""
  cfg = base.get_config()
  cfg.train_steps = 10
  cfg.schedule.warmup_steps = 1
  cfg.logging.profile_steps = spec
  found = [p for p in config_sanity.problems(cfg.to_dict()) if "profile_steps" in p]
  assert found == ([] if ok else [found[0]]) and (ok or "train_steps=10" in found[0]), found


@pytest.mark.parametrize("masking,positions,ok", [
    (None, None, True), (True, None, True), (True, False, True), (False, None, True),
    (False, False, True), (None, True, True), (False, True, False)])
def test_document_positions_need_document_masking(masking, positions, ok):
  """Restarting positions at documents that still attend to each other is refused."""
  cfg = base.get_config()
  cfg.data.document_masking, cfg.data.document_positions = masking, positions
  found = [p for p in config_sanity.problems(cfg.to_dict()) if "document_" in p]
  assert found == ([] if ok else [found[0]]) and (ok or "set both True" in found[0]), found
