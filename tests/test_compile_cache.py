"""The persistent compilation cache's directory (train/runtime/compile_cache.py): the
environment wins, `none` turns it off, and the default is per user and per host CPU, never
per workdir."""
from train.runtime import compile_cache

XEON = "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse avx2 avx512f amx_tile\n"
ZEN3 = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2\n"


def test_the_environment_wins_in_order():
  env = {"JAX_COMPILATION_CACHE_DIR": "/jax", "PREGATE_XLA_CACHE": "/ours"}
  assert compile_cache.plan(env) == "/jax"
  assert compile_cache.plan({"PREGATE_XLA_CACHE": "/ours", "XDG_CACHE_HOME": "/xdg"}) == "/ours"


def test_none_turns_it_off():
  assert compile_cache.plan({"PREGATE_XLA_CACHE": "none"}) is None
  assert compile_cache.plan({"PREGATE_XLA_CACHE": " None "}) is None


def test_default_is_per_user_and_host():
  path = compile_cache.plan({"XDG_CACHE_HOME": "/home/u/.cache"})
  assert path == f"/home/u/.cache/pregate/xla/{compile_cache.host_key()}"


def test_host_key_names_the_instruction_set():
  """XLA:CPU compiles for the host's ISA: another CPU (or flag set) must get another dir."""
  xeon, zen3 = compile_cache.host_key(XEON), compile_cache.host_key(ZEN3)
  assert xeon != zen3
  assert xeon == compile_cache.host_key(XEON.replace("avx2 avx512f", "avx512f avx2"))
  assert "/" not in xeon and xeon.split("-")[0] == compile_cache.host_key("").split("-")[0]


def test_a_cache_that_cannot_be_made_leaves_the_run_compiling(tmp_path, monkeypatch):
  """An unwritable place is no cache (the run compiles as usual), not a crash."""
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("PREGATE_XLA_CACHE", str(blocker / "cache"))
  assert compile_cache.apply() is None
