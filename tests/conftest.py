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
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import helpers
import launcher
import shared_runs

TIERS = {  # in the order the full suite runs them: heaviest first
    "multiprocess": "several JAX processes on 127.0.0.1",
    "e2e": "runs a real pregate command in a child process",
    "hf": "checked against transformers / torch (CPU)",
    "slow": "in process, tens of seconds a test (large or many XLA compiles)",
}
FAST = "fast"


CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def pytest_configure(config):
  for name, doc in TIERS.items():
    config.addinivalue_line("markers", f"{name}: {doc}")
  config.addinivalue_line("markers", f"{FAST}: no tier marker: in process, the set-up check")
  _share_compilation_cache(config)
  _compile_fast(config)
  _pin_torch_cache()


def _pin_torch_cache() -> None:
  """torch writes TORCHINDUCTOR_CACHE_DIR into os.environ the first time it is used in
  process; a command a test then starts differs from the suite's zygote and starts cold (2-3 s).
  Set to the absolute path torch would choose before anything imports it, the value never
  changes. Inherited by the test workers."""
  os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
      tempfile.gettempdir(), f"torchinductor_{os.getuid()}"))


def _compile_fast(config) -> None:
  """helpers.FAST_COMPILE_FLAGS for the test workers and their children (set before JAX
  starts)."""
  if hasattr(config, "workerinput"):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in helpers.FAST_COMPILE_FLAGS if f.split("=")[0] not in flags]
  os.environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()


def _share_compilation_cache(config) -> None:
  """One JAX persistent compilation cache for this test run: the test workers and every command
  they start inherit it through the environment, so the many tiny runs of one configuration
  compile their step once. It is keyed on the program and the compiler (results cannot differ),
  and the backend-compile event still fires on a hit, so compile counts are unchanged
  (docs/stack-facts.md). A cache the environment names is used as it is."""
  if hasattr(config, "workerinput") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  config._pregate_xla_cache = tempfile.mkdtemp(prefix="pregate-test-xla-cache-")
  os.environ.update(JAX_COMPILATION_CACHE_DIR=config._pregate_xla_cache, **CACHE_ENV)


_STARTED = collections.Counter()  # tests/launcher.py's counts, from every test worker


def pytest_sessionfinish(session):
  if hasattr(session.config, "workerinput"):
    session.config.workeroutput["launcher_started"] = dict(launcher.started)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
  _STARTED.update(getattr(node, "workeroutput", {}).get("launcher_started", {}))


def pytest_terminal_summary(terminalreporter):
  """How the suite's commands started: a cold one costs 2-3 s more (tests/launcher.py)."""
  counts = _STARTED + launcher.started
  if counts:
    terminalreporter.write_line("commands started: " + "; ".join(
        f"{n} {how}" for how, n in counts.most_common()))


def pytest_unconfigure(config):
  cache = getattr(config, "_pregate_xla_cache", None)
  if cache:
    shutil.rmtree(cache, ignore_errors=True)


def pytest_collection_modifyitems(items):
  """Every test of a file without a tier marker is `fast`, so `-m fast` selects them. The
  heaviest tiers run first (files stay together), so the two workers end on short tests rather
  than one waiting while the other finishes a multi-process run."""
  for item in items:
    if not any(item.get_closest_marker(name) for name in TIERS):
      item.add_marker(FAST)
  order = [*TIERS, FAST]
  items.sort(key=lambda item: next(i for i, tier in enumerate(order)
                                   if item.get_closest_marker(tier)))


class ChildProcessInFastTier(AssertionError):
  """A fast-tier test started a Python child process: its file belongs in the e2e tier."""


_POPEN_INIT = subprocess.Popen.__init__
_SPAWN = launcher.spawn  # a forked command (tests/launcher.py) is a child process too


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """The fast tier runs in process: a fast test (or a fixture it builds) that starts a Python
  child (a pregate command, a worker script) fails, so a file's tier cannot silently drift."""
  if item.get_closest_marker(FAST) is None:
    yield
    return

  def refuse(argv):
    raise ChildProcessInFastTier(
        f"{item.nodeid} runs {' '.join(map(str, argv))[:200]}: give its file "
        f"`pytestmark = pytest.mark.e2e` (or move the test to an e2e file)")

  def guarded(self, args, *rest, **kw):
    argv = [args] if isinstance(args, (str, bytes)) else list(args)
    if argv and str(argv[0]) == sys.executable:
      refuse(argv)
    _POPEN_INIT(self, args, *rest, **kw)

  subprocess.Popen.__init__ = guarded
  launcher.spawn = lambda argv, *rest, **kw: refuse(["python", *argv])
  try:
    yield
  finally:
    subprocess.Popen.__init__ = _POPEN_INIT
    launcher.spawn = _SPAWN


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


@pytest.fixture(autouse=True)
def _environment_restored():
  """Each test leaves os.environ as it found it. A library that sets a variable in process
  (torch sets TORCHINDUCTOR_CACHE_DIR on first use) would otherwise change every later
  command's environment, and tests/launcher.py starts such a command cold (2-3 s more). A
  zygote first needed inside a test starts in the environment as it was between tests."""
  own = "PYTEST_CURRENT_TEST"  # pytest's, which it sets and removes itself
  before = {k: v for k, v in os.environ.items() if k != own}
  launcher.session_env = helpers.child_env()  # for a zygote this test starts
  yield
  for key in set(os.environ) - set(before) - {own}:
    del os.environ[key]
  for key, value in before.items():
    if os.environ.get(key) != value:
      os.environ[key] = value
