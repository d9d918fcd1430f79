"""How a config field is declared, once: `field()` on a frozen dataclass section.

A section of the experiment config (gates/config_schema.py; the model's is models/config.py's
ModelConfig) is a frozen dataclass, and each of its fields says, in one place: its type (the
annotation), its default, its allowed range or choices, its resume kind (KINDS) and a one-line
doc. Everything else is derived from that: configs/base.py's defaults, the sanity rules
(gates/config_sanity.py, with `Field.problem`), the resume-ownership kinds (gates/ownership.py),
the fuzz strategies (tests/test_config_fuzz.py) and the documentation (`describe`). The same
dataclass is the typed view that code passes around (`build`).

Why core/: models/ declares its section with this, gates/ and configs/ read every section, and
core/ lies below all of them; it needs nothing but the standard library. Why plain dataclasses
rather than ml_collections' dataclass flags: config files keep returning ConfigDicts and every
`--config.section.field=value` override keeps working untouched (DEFINE_config_dataclass would
change every command and config file), while a frozen dataclass is already the typed view a type
checker can check; a separate table would have declared each field a second time.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Iterator, Mapping

from core.checks import is_int

# identity: what the run is (architecture, data, seed): never changes in a workdir.
# schedule: the trajectory (steps, batch, optimizer): changes only with --allow_config_change.
# execution: how the same computation runs (backend, remat, mesh): tensors are identical.
# safe: bookkeeping (logging, evaluation, checkpoint cadence): free to change.
KINDS = ("identity", "schedule", "execution", "safe")
I32 = 2**31 - 1  # step counters are int32; numpy seeds and grain indices stay below too
BIG = 2**20  # a generous cap for sizes, counts and mesh axes (beyond any run this stack does)
_SPEC = "pregate_field"


@dataclasses.dataclass(frozen=True)
class Field:
  """One declared field: `type` and `path` come from where it is declared, the rest from
  `field()`. `required` fields have no dataclass default (a ModelConfig read back from a
  checkpoint must state them); `default` is still the experiment default."""

  default: Any
  kind: str
  doc: str
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False  # low itself excluded
  high_open: bool = False
  choices: tuple[Any, ...] = ()
  extra: tuple[Any, ...] = ()  # values allowed outside the range (e.g. mesh.data=-1)
  empty_ok: bool = True  # for str
  required: bool = False
  size: bool = False  # a model size the family search picks (gates/shapes.py)
  type: str = ""  # int | float | bool | str | choice | mapping
  path: str = ""  # e.g. "model.d_model"

  @property
  def name(self) -> str:
    return self.path.rsplit(".", 1)[-1]

  def problem(self, value: Any) -> str | None:
    """Why `value` cannot be this field's value, naming the field; None if it can."""
    path = self.path
    if self.type == "mapping":
      return None if isinstance(value, Mapping) else f"{path} must be a mapping, got {value!r}"
    if self.type == "bool":
      ok = isinstance(value, bool) or (value is None and None in self.extra)
      return None if ok else f"{path} must be true or false, got {value!r}"
    if self.type == "choice":
      return None if value in self.choices and type(value) is type(self.choices[0]) else (
          f"{path}={value!r} is not one of {self.choices}")
    if self.type == "str":
      if not isinstance(value, str):
        return f"{path} must be a string, got {value!r}"
      return None if value or self.empty_ok else f"{path} must not be empty"
    if value in self.extra and is_int(value):
      return None
    # A float field takes an int only in int32 range (JAX would overflow converting more).
    ok_type = is_int(value) if self.type == "int" else (
        isinstance(value, float) or (is_int(value) and abs(value) <= I32))
    if not ok_type:
      return f"{path} must be {'an integer' if self.type == 'int' else 'a number'}, got {value!r}"
    if not math.isfinite(value):
      return f"{path} must be finite, got {value!r}"
    also = f" (or {', '.join(map(str, self.extra))})" if self.extra else ""
    if not (value > self.low if self.low_open else value >= self.low):
      bound = "> 0" if self.type == "int" and self.low == 1 else (
          f"{'>' if self.low_open else '>='} {_num(self.low)}")
      return f"{path}={value!r} must be {bound}{also}"
    if not (value < self.high if self.high_open else value <= self.high):
      return f"{path}={value!r} must be {'<' if self.high_open else '<='} {_num(self.high)}"
    return None

  def allowed(self) -> str:
    """The range or choices, as the documentation shows them."""
    if self.type == "choice":
      return " | ".join(map(str, self.choices))
    if self.type in ("int", "float"):
      lo = "(" if self.low_open or not math.isfinite(self.low) else "["
      hi = ")" if self.high_open or not math.isfinite(self.high) else "]"
      also = f" or {', '.join(map(str, self.extra))}" if self.extra else ""
      return f"{lo}{_num(self.low)}, {_num(self.high)}{hi}{also}"
    if self.type == "bool" and None in self.extra:
      return "true | false | None"
    return "non-empty" if self.type == "str" and not self.empty_ok else ""


def _num(x: float) -> str:
  return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"


def field(default: Any, kind: str, doc: str, *, low: float = -math.inf,
          high: float | None = None, low_open: bool = False, high_open: bool = False,
          choices: tuple[Any, ...] = (), extra: tuple[Any, ...] = (), empty_ok: bool = True,
          required: bool = False, size: bool = False) -> Any:
  """Declare a field: its default, resume kind (KINDS), one-line doc, and its range (numbers;
  an int without `high` stops at int32's max) or `choices` (a str); see Field. A mapping
  default is copied per instance."""
  spec = Field(default, kind, doc, low, math.inf if high is None else high, low_open, high_open,
               choices, extra, empty_ok, required, size)
  meta = {_SPEC: (spec, high is None)}  # (declaration, range open above: int32 for an int)
  if required:
    return dataclasses.field(metadata=meta)
  if isinstance(default, Mapping):
    return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def _type_of(hint: Any, spec: Field) -> tuple[str, tuple[Any, ...]]:
  """The value type a field's annotation declares, and the extra values it admits (None)."""
  extra = spec.extra
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) != len(typing.get_args(hint)):
      extra = (*extra, None)
    hint = args[0]
  if typing.get_origin(hint) in (dict, Mapping) or hint in (dict, Mapping):
    return "mapping", extra
  names = {int: "int", float: "float", bool: "bool", str: "choice" if spec.choices else "str"}
  if hint not in names:
    raise TypeError(f"{spec.path}: a config field is int, float, bool, str or a mapping, "
                    f"not {hint!r}")
  return names[hint], extra


def is_section(hint: Any) -> bool:
  return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def fields(section: type, prefix: str = "") -> Iterator[Field]:
  """Every declared field of `section` and of the sections nested in it, in declaration order,
  each with its dotted path and type. A field without `field()` is a declaration error."""
  hints = typing.get_type_hints(section)
  for f in dataclasses.fields(section):
    path = prefix + f.name
    if is_section(hints[f.name]):
      yield from fields(hints[f.name], path + ".")
      continue
    if _SPEC not in f.metadata:
      raise TypeError(f"{section.__name__}.{f.name}: declare it with core.config_fields.field "
                      f"(type, default, range, kind and doc)")
    spec, open_high = f.metadata[_SPEC]
    spec = dataclasses.replace(spec, path=path)
    kind, extra = _type_of(hints[f.name], spec)
    high = I32 if kind == "int" and open_high else spec.high
    yield dataclasses.replace(spec, type=kind, extra=extra, high=high)


def defaults(section: type) -> dict[str, Any]:
  """The nested dict of every field's default (the config a ConfigDict is built from)."""
  hints = typing.get_type_hints(section)
  out: dict[str, Any] = {}
  for f in dataclasses.fields(section):
    if is_section(hints[f.name]):
      out[f.name] = defaults(hints[f.name])
    else:
      default = f.metadata[_SPEC][0].default
      out[f.name] = dict(default) if isinstance(default, Mapping) else default
  return out


def build(section: type, values: Mapping[str, Any], strict: bool = True) -> Any:
  """The typed view of a config dict (a ConfigDict's to_dict()): `section` built with its nested
  sections; keys it does not declare are an error (TypeError) if `strict`, else ignored."""
  hints = typing.get_type_hints(section)
  kwargs = {}
  for f in dataclasses.fields(section):
    if f.name not in values:
      continue
    value = values[f.name]
    if is_section(hints[f.name]):
      value = build(hints[f.name], value, strict)
    elif isinstance(value, Mapping):
      value = _plain(value)
    kwargs[f.name] = value
  unknown = sorted(set(values) - set(kwargs))
  if unknown and strict:
    raise TypeError(f"{section.__name__}: unknown field(s) {unknown}")
  return section(**kwargs)


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
  return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in value.items()}


def describe(section: type, prefix: str = "") -> str:
  """A table of every field: path, type = default, range or choices, resume kind, doc."""
  rows = [(f.path, f"{f.type} = {f.default!r}", f.allowed(), f.kind, f.doc)
          for f in fields(section, prefix)]
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]
                   for r in rows)
