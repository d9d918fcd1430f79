"""Defaults shared by every experiment; each experiment file overrides what it changes.

Every field is declared once, with its type, range, resume kind and doc, in
gates/config_schema.py (the model's in models/config.py); this builds the ConfigDict from those
defaults, so a locked ConfigDict turns a misspelled override into an error instead of a silently
ignored field. `python -c "from gates import config_schema; print(config_schema.describe())"`
lists every field.
"""
from typing import Any, Mapping

from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from gates import config_schema


def _section(defaults: Mapping[str, Any], prefix: str) -> ConfigDict:
  """A ConfigDict of declared defaults: a nested section or mapping stays a ConfigDict (a
  mixture's data.sources), and an optional bool defaulting to None is a placeholder(bool), so
  `--config.model.scan_layers=True` still parses as a bool."""
  c = ConfigDict()
  for name, value in defaults.items():
    if isinstance(value, Mapping):
      c[name] = _section(value, f"{prefix}{name}.")
    elif value is None and config_schema.field_at(f"{prefix}{name}").type == "bool":
      c[name] = placeholder(bool)
    else:
      c[name] = value
  return c


def get_config() -> ConfigDict:
  return _section(config_schema.DEFAULTS, "")
