"""Every command's entry point, thin: flags in, one library call, output. Each runs under the
one harness in core/cli.py. May import anything; nothing imports it."""
from __future__ import annotations

from ml_collections import config_flags

from gates import config_schema


def define_config_flag(what: str) -> None:
  """--config, locked (a misspelled override is an error), its help listing every field from the
  one declaration (gates/config_schema.py), so `--helpfull` documents what may be overridden."""
  lines = [f"{f.path}={f.default!r} ({f.type}, {f.allowed()}; {f.kind}): {f.doc}"
           for f in config_schema.FIELDS]
  config_flags.DEFINE_config_file(
      "config", None, f"{what}\nFields (override with --config.FIELD=VALUE):\n"
      + "\n".join(lines), lock_config=True)
