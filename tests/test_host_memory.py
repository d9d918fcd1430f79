"""A CPU training process re-executes itself once with glibc's huge-page malloc tunable, so XLA's
per-step temporaries fault in 2 MiB pages instead of 4 KiB ones. Checked by the effect that
matters (page faults per call, counted by the kernel), not by timing."""
import platform

import pytest

import helpers
from train.runtime import host_memory

pytestmark = pytest.mark.e2e


def _probe(mode: str, **env_over: str) -> dict:
  return helpers.python_json("page_faults.py", mode, env={"GLIBC_TUNABLES": None, **env_over})


def _thp_usable() -> bool:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[never]" not in f.read()
  except OSError:
    return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not _thp_usable(),
                    reason="needs glibc and transparent huge pages (madvise or always)")
def test_reexec_stops_per_call_page_faults():
  plain, tuned = _probe("plain"), _probe("reexec")
  assert plain["tunables"] is None and tuned["tunables"] == host_memory.TUNABLES
  # 16k faults = the 64 MiB working set in 4 KiB pages, mapped afresh on every call; in 2 MiB
  # pages it is 32 faults (the bound leaves room for pages the kernel cannot make huge).
  assert plain["faults_per_call"] > 8000, plain
  assert tuned["faults_per_call"] < plain["faults_per_call"] / 10, (plain, tuned)


def test_existing_tunables_are_left_alone():
  got = _probe("reexec", GLIBC_TUNABLES="glibc.malloc.arena_max=2")
  assert got["tunables"] == "glibc.malloc.arena_max=2"


@pytest.mark.parametrize("platforms, want", [("cpu", True), ("cuda", False), ("tpu,cpu", False)])
def test_only_cpu_runs_reexec(monkeypatch, platforms, want):
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", platforms)
  assert host_memory._cpu_host() is want
