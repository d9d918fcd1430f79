"""Start the suite's commands in fresh processes without paying JAX's import each time.

A pregate command spends ~2–3 s of a tiny run importing JAX and the stack before it does
anything, and the suite starts ~250 of them. Each test worker keeps one interpreter that has
imported them (tests/children/zygote.py) and forks it per command: the command still runs in
its own new process, with its own environment, working directory, argv, exit status and
signals, as `python -m MODULE`, `python -c CODE` or `python SCRIPT`. Two things differ from a
cold start, and both are handled here:
- a value read from the environment at import time is the zygote's: a command whose environment
  differs from it outside RUNTIME_ENV (read only once the command runs: XLA_FLAGS at backend
  start, pregate's own variables at use; JAX_PLATFORMS the zygote applies to JAX's config in
  the forked process) gets a plain interpreter instead;
- glibc reads GLIBC_TUNABLES at process start: a training command (which re-executes itself with
  them, train/runtime/host_memory.py) is forked from a zygote started with them, as its
  re-executed process would have been.
PLAIN_ENV set makes every command start a plain interpreter (to rule the launcher out).
"""
from __future__ import annotations

import atexit
import collections
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ZYGOTE = REPO / "tests" / "children" / "zygote.py"
RUNTIME_ENV = ("XLA_FLAGS", "PYTEST_CURRENT_TEST", "PREGATE_", "JAX_PLATFORMS")
PLAIN_ENV = "PREGATE_TEST_PLAIN_START"
_TRAINING_SCRIPTS = ("counting_main.py", "faulty_main.py", "slow_save_main.py")


class Process:
  """A forked command, with the part of subprocess.Popen's interface the tests use."""

  def __init__(self, conn: socket.socket, args: list[str]):
    self._conn, self.args, self.returncode = conn, args, None
    self.pid = int(self._line())

  def _line(self) -> str:
    """One line from the zygote, read unbuffered: a buffered reader could hold the exit status
    that arrived with the pid, where select() on the socket would never see it."""
    data = b""
    while not data.endswith(b"\n"):
      byte = self._conn.recv(1)
      if not byte:
        raise RuntimeError(f"test launcher died while {self.args[1:3]} ran")
      data += byte
    return data.decode()

  def poll(self) -> int | None:
    if self.returncode is None and select.select([self._conn], [], [], 0)[0]:
      self._collect()
    return self.returncode

  def wait(self, timeout: float | None = None) -> int:
    if self.returncode is None:
      if not select.select([self._conn], [], [], timeout)[0]:
        raise subprocess.TimeoutExpired(self.args, timeout)
      self._collect()
    return self.returncode

  def send_signal(self, sig: int) -> None:
    if self.returncode is None:
      os.kill(self.pid, sig)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)

  def _collect(self) -> None:
    self.returncode = int(self._line())
    self._conn.close()


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

  def differs(self, env: dict[str, str]) -> list[str]:
    """The variables outside RUNTIME_ENV in which `env` differs from the zygote's."""
    keys = set(env) | set(self.env)
    return sorted(k for k in keys if not k.startswith(RUNTIME_ENV)
                  and env.get(k) != self.env.get(k))

  def start(self, argv: list[str], env: dict[str, str], cwd: Path, out: str,
            err: str | None) -> Process:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(self.sock)
    request = {"argv": argv, "env": env, "cwd": str(cwd), "out": out, "err": err}
    conn.sendall((json.dumps(request) + "\n").encode())
    return Process(conn, [sys.executable, *argv])

  def close(self) -> None:
    self.proc.kill()
    self.proc.wait()
    self.log.close()
    shutil.rmtree(self.dir, ignore_errors=True)


_zygotes: dict[str | None, _Zygote] = {}
# The environment the zygotes start in: the session's between tests (tests/conftest.py), so a
# variable a test sets in process while a zygote starts does not become the zygote's (every
# later command would differ from it and start cold).
session_env: dict[str, str] | None = None
# Commands started: "forked", or "cold: VARS" naming the variables that ruled a fork out; the
# suite prints the totals (tests/conftest.py), so a change that makes commands cold shows.
started: collections.Counter[str] = collections.Counter()


def _wants_tunables(argv: list[str], env: dict[str, str]) -> str | None:
  """The GLIBC_TUNABLES a training command would re-execute itself with, else None."""
  from train.runtime import host_memory
  training = argv[:2] == ["-m", "train.main"] or Path(argv[0]).name in _TRAINING_SCRIPTS
  if training and "GLIBC_TUNABLES" not in env and host_memory.wants_reexec():
    return host_memory.TUNABLES
  return env.get("GLIBC_TUNABLES")


def spawn(argv: list[str], env: dict[str, str], cwd: Path, session: dict[str, str],
          out: str | os.PathLike, err: str | os.PathLike | None = None):
  """`python ARGV` (argv = ["-m", module, ...], ["-c", code, ...] or [script, ...]) started in
  a fresh process with stdout to the file `out` and stderr to `err` (None: into `out`); returns
  a Process, or a subprocess.Popen where the command needs a plain interpreter. The zygotes
  start in `session_env`, else in `session` (the environment the suite gives every command)."""
  tunables = _wants_tunables(argv, env)
  if tunables is not None:
    env = {**env, "GLIBC_TUNABLES": tunables}
  if not os.environ.get(PLAIN_ENV):
    if tunables not in _zygotes:
      base = dict(session_env or session)
      if tunables is not None:
        base["GLIBC_TUNABLES"] = tunables
      _zygotes[tunables] = _Zygote(base)
    differs = _zygotes[tunables].differs(env)
    if not differs:
      started["forked"] += 1
      return _zygotes[tunables].start(argv, env, cwd, str(out), err and str(err))
    started[f"cold: {', '.join(differs)}"] += 1
  else:
    started[f"cold: {PLAIN_ENV}"] += 1
  with open(out, "w") as out_file, open(err or os.devnull, "w") as err_file:
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=out_file, stderr=subprocess.STDOUT if err is None else err_file)


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float,
        session: dict[str, str]) -> subprocess.CompletedProcess:
  """spawn() and wait, with output captured as text, like subprocess.run(capture_output=True,
  text=True); on timeout the command is killed and TimeoutExpired raised."""
  with tempfile.TemporaryDirectory(prefix="pregate-cmd-") as tmp:
    out, err = Path(tmp) / "out", Path(tmp) / "err"
    proc = spawn(argv, env, cwd, session, out, err)
    try:
      rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
      raise
    read = lambda p: p.read_text(errors="replace") if p.exists() else ""
    return subprocess.CompletedProcess([sys.executable, *argv], rc, read(out), read(err))


def _close_all() -> None:
  for zygote in _zygotes.values():
    zygote.close()
  _zygotes.clear()


atexit.register(_close_all)
