"""tests/launcher.py: a command forked from the warm interpreter sees the process a cold start
gives it (argv, working directory, import path, environment, device count, exit status, output);
a command whose environment changes an import-time setting gets a cold start; a timeout kills it."""
import json
import signal
import subprocess
import sys
import time

import pytest

import helpers
import launcher

pytestmark = pytest.mark.e2e

PROBE = str(helpers.CHILDREN / "probe_process.py")


def _cold(argv, env):
  return subprocess.run([sys.executable, *argv], cwd=helpers.REPO, env=env, capture_output=True,
                        text=True, timeout=120)


@pytest.mark.parametrize("devices, platforms", [(1, None), (3, "cpu")])
def test_forked_command_sees_what_a_cold_start_sees(devices, platforms):
  """Forked (JAX_PLATFORMS too: the zygote applies it), and identical to a cold start."""
  env = {**helpers.child_env(), **helpers.fake_devices(devices), "PREGATE_TEST_PROBE": "x"}
  if platforms:
    env["JAX_PLATFORMS"] = platforms
  forked_before = launcher.started["forked"]
  forked = helpers.start([PROBE, "a", "b c"], env, 120)
  assert launcher.started["forked"] == forked_before + 1
  cold = _cold([PROBE, "a", "b c"], env)
  assert (forked.returncode, forked.stdout, forked.stderr) == (3, cold.stdout, cold.stderr)
  assert f'"devices": {devices}' in forked.stdout and '"name": "__main__"' in forked.stdout
  assert f'"platforms": {json.dumps(env.get("JAX_PLATFORMS"))}' in forked.stdout, forked.stdout


def test_module_command_runs_as_main():
  forked = helpers.run_module("train.cli.plan", "--nope")
  cold = _cold(["-m", "train.cli.plan", "--nope"], helpers.child_env())
  assert forked.returncode == cold.returncode != 0
  assert forked.stderr == cold.stderr and forked.stdout == cold.stdout


def test_import_time_setting_gets_a_cold_start():
  """JAX reads JAX_ENABLE_X64 when it is imported: the zygote's import cannot honour it."""
  env = {**helpers.child_env(), "JAX_ENABLE_X64": "1"}
  got = helpers.start([PROBE], env, 120)
  assert '"x64": true' in got.stdout, got.stdout + got.stderr


def test_timeout_kills_the_command():
  t0 = time.monotonic()
  with pytest.raises(subprocess.TimeoutExpired):
    helpers.start([PROBE, "sleep"], helpers.child_env(), 3)
  assert time.monotonic() - t0 < 30


def test_training_command_starts_with_its_reexec_tunables():
  """train.main re-executes itself with GLIBC_TUNABLES on a glibc CPU host; its fork starts
  with them already (glibc reads them only at process start)."""
  from train.runtime import host_memory
  want = host_memory.TUNABLES if host_memory.wants_reexec() else None
  assert launcher._wants_tunables(["-m", "train.main"], dict(helpers.child_env())) == want
  assert launcher._wants_tunables(["-m", "train.cli.plan"], {}) is None


def test_code_command_and_background_signal(tmp_path):
  """`python -c CODE` runs as __main__ like a cold start; a background command takes a signal
  and reports it as Popen does (negative exit status)."""
  code = "import sys; print(__name__, sys.argv); sys.exit(4)"
  forked = helpers.start(["-c", code, "x"], helpers.child_env(), 60)
  cold = _cold(["-c", code, "x"], helpers.child_env())
  assert (forked.returncode, forked.stdout) == (cold.returncode, cold.stdout) == (4, cold.stdout)
  proc = helpers.spawn([PROBE, "sleep"], tmp_path / "log")
  assert proc.poll() is None
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(30) == -signal.SIGTERM and proc.poll() == -signal.SIGTERM
