"""Test-suite launcher (tests/launcher.py): an interpreter that has imported JAX and the stack
once, then forks one fresh process per command it is sent.

Each forked process starts from this interpreter's state (modules imported, no JAX backend
started, nothing run) and becomes the command: the caller's environment, working directory,
argv, stdout and stderr, then runs as `python -m MODULE`, `-c CODE` or `SCRIPT` would.
What a command reads from the environment at import time must match this interpreter's; the
launcher checks that before sending (tests/launcher.py). Exit statuses are reported as
subprocess does (negative for a signal).

Protocol, one connection per command: the caller sends one JSON line {argv, env, cwd, out,
err} (files for stdout and stderr; err null: stderr goes to out); this process answers the
child's pid, then its exit status, one line each.
"""
import gc
import json
import os
import runpy
import select
import signal
import socket
import sys
import types

# The imports every pregate command pays for: JAX, the libraries, and the stack's own layers.
import flax.nnx  # noqa: F401
import grain  # noqa: F401
import jax  # noqa: F401
import optax  # noqa: F401
import orbax.checkpoint  # noqa: F401
import tensorstore  # noqa: F401

import train.cli.main  # noqa: F401
import train.restore  # noqa: F401
import train.run.loop  # noqa: F401
import train.runtime.distributed  # noqa: F401
import train.runtime.gpu_runtime  # noqa: F401


def _become(request: dict) -> None:
  """In the forked child: take the command's process state, then run it as __main__."""
  devnull = os.open(os.devnull, os.O_RDONLY)
  os.dup2(devnull, 0)
  os.dup2(os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
  if request["err"] is None:  # stderr into stdout's file
    os.dup2(1, 2)
  else:
    os.dup2(os.open(request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
  os.environ.clear()
  os.environ.update(request["env"])
  # JAX read JAX_PLATFORMS when this interpreter imported it; the command's own value applies
  # as it would have (no backend has started; tests/launcher.py RUNTIME_ENV lets it differ).
  jax.config.update("jax_platforms", os.environ.get("JAX_PLATFORMS") or None)
  os.chdir(request["cwd"])
  argv = request["argv"]
  sys.orig_argv = [sys.executable, *argv]  # what a re-exec (train/runtime/host_memory) repeats
  if argv[0] == "-m":
    sys.argv = [argv[1], *argv[2:]]
    sys.path[0] = os.getcwd()
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
  elif argv[0] == "-c":
    sys.argv = ["-c", *argv[2:]]
    sys.path[0] = ""
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    exec(compile(argv[1], "<string>", "exec"), main.__dict__)
  else:
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
    runpy.run_path(argv[0], run_name="__main__")
  sys.exit(0)


def _read_request(conn: socket.socket) -> dict:
  data = b""
  while not data.endswith(b"\n"):
    chunk = conn.recv(65536)
    if not chunk:
      raise ConnectionError("launcher closed the connection mid-request")
    data += chunk
  return json.loads(data)


def serve(path: str) -> None:
  parent = os.getppid()
  listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  listener.bind(path)
  listener.listen(16)
  gc.freeze()  # keep the imported objects' pages shared with the children
  waiting: dict[int, socket.socket] = {}
  while True:
    ready, _, _ = select.select([listener], [], [], 0.05)
    if ready:
      conn, _ = listener.accept()
      request = _read_request(conn)
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        listener.close()
        for other in (conn, *waiting.values()):
          other.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _become(request)
      conn.sendall(f"{pid}\n".encode())
      waiting[pid] = conn
    while waiting:
      pid, status = os.waitpid(-1, os.WNOHANG)
      if pid == 0:
        break
      conn = waiting.pop(pid)
      try:
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
      except OSError:
        pass  # the caller gave up (timeout) and closed its end
      conn.close()
    if os.getppid() != parent:  # the test worker is gone: so are its commands
      for pid in waiting:
        os.kill(pid, signal.SIGKILL)
      return


if __name__ == "__main__":
  serve(sys.argv[1])
