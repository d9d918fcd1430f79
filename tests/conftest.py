"""Session fixtures and markers for the end-to-end tests of the training command."""
import pytest
import watch_runs

import helpers


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: end-to-end runs of the real command (seconds to minutes)")


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory) -> str:
  """Tiny Shakespeare tokenized once per session, so no run re-tokenizes the corpus."""
  return helpers.prepare_once(tmp_path_factory.mktemp("prepared") / "shakespeare_char")


@pytest.fixture(scope="module")
def preempted(prepared_data, tmp_path_factory):
  """The tests/test_watch_*.py run preempted at step 10 and resumed (made once per session)."""
  return watch_runs.preempted(prepared_data, tmp_path_factory)


@pytest.fixture(scope="module")
def crashed(prepared_data, tmp_path_factory):
  """The tests/test_watch_*.py run killed after step 25 and resumed (made once per session)."""
  return watch_runs.crashed(prepared_data, tmp_path_factory)
