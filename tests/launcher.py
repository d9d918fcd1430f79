"""Start the suite's commands in fresh processes without paying JAX's import each time.

A pregate command spends ~2–3 s of a tiny run importing JAX and the stack before it does
anything, and the suite starts ~250 of them. Each test worker keeps one interpreter that has
imported them (tests/children/zygote.py) and forks it per command: the command still runs in
its own new process, with its own environment, working directory, argv, exit status and
signals, as `python -m MODULE` or `python SCRIPT`. Two things differ from a cold start, and both
are handled here:
- a value read from the environment at import time is the zygote's: a command whose environment
  differs from it outside RUNTIME_ENV (read only once the command runs: XLA_FLAGS at backend
  start, pregate's own variables at use) gets a plain interpreter instead;
- glibc reads GLIBC_TUNABLES at process start: a training command (which re-executes itself with
  them, train/runtime/host_memory.py) is forked from a zygote started with them, as its
  re-executed process would have been.
Tests of process start itself (the re-exec, console scripts) start plain interpreters.
"""
from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZYGOTE = REPO / "tests" / "children" / "zygote.py"
RUNTIME_ENV = ("XLA_FLAGS", "PYTEST_CURRENT_TEST", "PREGATE_")
PLAIN_ENV = "PREGATE_TEST_PLAIN_START"  # set: every command starts a plain interpreter
_TRAINING_SCRIPTS = ("counting_main.py", "faulty_main.py", "slow_save_main.py")


class _Zygote:
  def __init__(self, env: dict[str, str]):
    self.env = env
    self.dir = tempfile.mkdtemp(prefix="pregate-zygote-")
    self.sock = os.path.join(self.dir, "z.sock")
    self.log = open(os.path.join(self.dir, "zygote.err"), "w")
    self.proc = subprocess.Popen([sys.executable, str(ZYGOTE), self.sock], cwd=REPO, env=env,
                                 stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
    deadline = time.monotonic() + 120
    while not os.path.exists(self.sock):
      if self.proc.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"test launcher did not start: {Path(self.log.name).read_text()}")
      time.sleep(0.02)

  def serves(self, env: dict[str, str]) -> bool:
    keys = set(env) | set(self.env)
    return all(env.get(k) == self.env.get(k) for k in keys if not k.startswith(RUNTIME_ENV))

  def run(self, argv: list[str], env: dict[str, str], cwd: Path,
          timeout: float) -> subprocess.CompletedProcess:
    out = tempfile.NamedTemporaryFile(dir=self.dir, suffix=".out", delete=False).name
    err = tempfile.NamedTemporaryFile(dir=self.dir, suffix=".err", delete=False).name
    request = {"argv": argv, "env": env, "cwd": str(cwd), "out": out, "err": err}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
      conn.connect(self.sock)
      conn.sendall((_json(request) + "\n").encode())
      reader = conn.makefile("r")
      pid = int(reader.readline())
      conn.settimeout(timeout)
      try:
        status = reader.readline()
      except TimeoutError:
        os.kill(pid, 9)
        raise subprocess.TimeoutExpired([sys.executable, *argv], timeout) from None
      if not status:
        raise RuntimeError(f"test launcher died: {Path(self.log.name).read_text()}")
      return subprocess.CompletedProcess([sys.executable, *argv], int(status), _read(out),
                                         _read(err))
    finally:
      conn.close()
      for path in (out, err):
        os.unlink(path)

  def close(self) -> None:
    self.proc.kill()
    self.proc.wait()
    self.log.close()


_zygotes: dict[str | None, _Zygote] = {}


def _json(obj) -> str:
  import json
  return json.dumps(obj)


def _read(path: str) -> str:
  return Path(path).read_text(errors="replace")


def _wants_tunables(argv: list[str], env: dict[str, str]) -> str | None:
  """The GLIBC_TUNABLES a training command would re-execute itself with, else None."""
  from train.runtime import host_memory
  training = argv[:2] == ["-m", "train.main"] or Path(argv[0]).name in _TRAINING_SCRIPTS
  if training and "GLIBC_TUNABLES" not in env and host_memory.wants_reexec():
    return host_memory.TUNABLES
  return env.get("GLIBC_TUNABLES")


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float,
        session_env: dict[str, str]) -> subprocess.CompletedProcess:
  """`python ARGV` (argv = ["-m", module, ...] or [script, ...]) in a fresh process, with
  output captured as text, like subprocess.run(capture_output=True, text=True). The zygotes
  start in `session_env` (the environment the suite gives every command)."""
  tunables = _wants_tunables(argv, env)
  if tunables is not None:
    env = {**env, "GLIBC_TUNABLES": tunables}
  if not os.environ.get(PLAIN_ENV):
    if tunables not in _zygotes:
      base = dict(session_env)
      if tunables is not None:
        base["GLIBC_TUNABLES"] = tunables
      _zygotes[tunables] = _Zygote(base)
    if _zygotes[tunables].serves(env):
      return _zygotes[tunables].run(argv, env, cwd, timeout)
  return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _close_all() -> None:
  for zygote in _zygotes.values():
    zygote.close()
  _zygotes.clear()


atexit.register(_close_all)
