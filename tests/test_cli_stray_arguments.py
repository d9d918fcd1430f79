"""Every console script refuses a stray argument the same way (README, Commands): one
`ERROR: ConfigError: unexpected arguments ...` line, exit 2, before the command does anything.

The commands come from setup.cfg's console_scripts, so a new command is covered without an edit
here; each gets its required flags (pointing nowhere: the refusal comes first) and its
positional arguments, then one argument too many.
"""
from __future__ import annotations

import configparser

import pytest

import helpers

pytestmark = pytest.mark.e2e


# Required flags and positional arguments of the commands that have them; values point nowhere
# on purpose (the stray argument must be refused before they are looked at).
REQUIRED: dict[str, list[str]] = {
    "pregate-train": ["--config=configs/shakespeare_char.py", "--workdir=/nonexistent/run"],
    "pregate-plan": ["--config=configs/shakespeare_char.py"],
    "pregate-bench": ["--config=configs/shakespeare_char.py"],
    "pregate-prepare": ["--input=/nonexistent/in.txt", "--output_dir=/nonexistent/out"],
    "pregate-eval": ["--checkpoint=/nonexistent/run"],
    "pregate-sample": ["--checkpoint=/nonexistent/run", "--prompt=x"],
    "pregate-export": ["--checkpoint=/nonexistent/run", "--out=/nonexistent/hf"],
    "pregate-import": ["--hf_dir=/nonexistent/hf", "--out=/nonexistent/run"],
    "pregate-inspect": ["/nonexistent/run"],
    "pregate-stamp": ["/nonexistent/run", "--config=configs/shakespeare_char.py"],
    "pregate-lm-eval": ["--model", "pregate"],
    "pregate-ship": ["/nonexistent/run", "--contract=/nonexistent/ship.yaml"],
}
# Commands whose last positional takes one or more values have no "one too many".
VARARGS = {"pregate-fit", "pregate-plot"}


def _console_scripts() -> dict[str, str]:
  cfg = configparser.ConfigParser()
  cfg.read(helpers.REPO / "setup.cfg")
  lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict(tuple(p.strip() for p in line.split("=", 1)) for line in lines)


SCRIPTS = _console_scripts()


def test_every_command_is_listed_here():
  """A new console script must say here which flags it requires (or that it takes varargs)."""
  assert set(SCRIPTS) == set(REQUIRED) | VARARGS


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_stray_argument_is_one_line_exit_2(name):
  module, func = SCRIPTS[name].split(":")
  program = f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; {func}()"
  proc = helpers.start(["-c", program, *REQUIRED[name], "stray-argument"], helpers.child_env(),
                       120)
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("ERROR: ConfigError: unexpected arguments"), lines[0]
  assert "stray-argument" in lines[0]
