"""Test tiers, session fixtures.

Tiers are declared here once. A test file is in the tier its module-level `pytestmark` names, or
in `fast` when it names none (tests/test_tiers.py keeps it so):
- fast: in process, seconds each; the set-up check (`pytest -m fast`, README), <= 5 minutes
  on a 2-core machine.
- slow: in process, but tens of seconds a test (large or many XLA compiles).
- e2e: runs a real command (train, plan, eval, export, ...) in a child process.
- multiprocess: several JAX processes talking over 127.0.0.1.
- hf: checked against the real Hugging Face client (transformers, torch CPU).
The full suite (`.ci/run`) runs every tier.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import shared_runs

import helpers

TIERS = {
    "slow": "in process, tens of seconds a test (large or many XLA compiles)",
    "e2e": "runs a real pregate command in a child process",
    "multiprocess": "several JAX processes on 127.0.0.1",
    "hf": "checked against transformers / torch (CPU)",
}
FAST = "fast"


def pytest_configure(config):
  for name, doc in TIERS.items():
    config.addinivalue_line("markers", f"{name}: {doc}")
  config.addinivalue_line("markers", f"{FAST}: no tier marker: in process, the set-up check")


def pytest_collection_modifyitems(items):
  """Every test of a file without a tier marker is `fast`, so `-m fast` selects them."""
  for item in items:
    if not any(item.get_closest_marker(name) for name in TIERS):
      item.add_marker(FAST)


class ChildProcessInFastTier(AssertionError):
  """A fast-tier test started a Python child process: its file belongs in the e2e tier."""


_POPEN_INIT = subprocess.Popen.__init__


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """The fast tier runs in process: a fast test (or a fixture it builds) that starts a Python
  child (a pregate command, a worker script) fails, so a file's tier cannot silently drift."""
  if item.get_closest_marker(FAST) is None:
    yield
    return

  def guarded(self, args, *rest, **kw):
    argv = [args] if isinstance(args, (str, bytes)) else list(args)
    if argv and str(argv[0]) == sys.executable:
      raise ChildProcessInFastTier(
          f"{item.nodeid} runs {' '.join(map(str, argv))[:200]}: give its file "
          f"`pytestmark = pytest.mark.e2e` (or move the test to an e2e file)")
    _POPEN_INIT(self, args, *rest, **kw)

  subprocess.Popen.__init__ = guarded
  try:
    yield
  finally:
    subprocess.Popen.__init__ = _POPEN_INIT


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory, worker_id) -> Path:
  """Where the runs shared by the whole test run live (every worker sees the same one)."""
  return shared_runs.session_root(tmp_path_factory, worker_id)


@pytest.fixture(scope="session")
def prepared_data(shared_root) -> str:
  """Tiny Shakespeare tokenized once per test run (one path for every worker, so runs made by
  one worker resume on another), so no run re-tokenizes the corpus."""
  return str(shared_runs.once(shared_root, "prepared_char", helpers.prepare_once))


@pytest.fixture(scope="session")
def trained_tiny(prepared_data, shared_root) -> Path:
  """The 20-step tiny run (shared read-only; copy it with shared_runs.copy_of to change it)."""
  return shared_runs.once(shared_root, "trained_20",
                          lambda w: shared_runs.trained(prepared_data, w))


@pytest.fixture(scope="session")
def preempted(prepared_data, shared_root) -> Path:
  """A tiny run preempted at step 10 and resumed (tests/shared_runs.py)."""
  return shared_runs.preempted(prepared_data, shared_root)


@pytest.fixture(scope="session")
def crashed(prepared_data, shared_root) -> Path:
  """A tiny run killed after step 25 and resumed (tests/shared_runs.py)."""
  return shared_runs.crashed(prepared_data, shared_root)
