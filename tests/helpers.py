"""Shared helpers for the end-to-end tests of `python -m train.main`.

Runs are real processes of the real commands, kept tiny so the whole suite stays fast on a
2-core CPU; tests/launcher.py starts them without re-importing JAX each time. XLA compiles are
counted INSIDE the child, with the jax.monitoring event that fires only on a real backend
compile (docs/stack-facts.md: jax_log_compiles also fires on lower).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import launcher

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "tinyshakespeare.txt"
CONFIG = "configs/shakespeare_char.py"
FORCE = "--force_under_provisioned"
COUNT_ENV = "PREGATE_TEST_COMPILE_COUNT_FILE"

# A 1-layer model small enough that a 30-step run takes seconds; N = 11,392 (vocab 65), so any
# train_steps below 1,780 is under the Chinchilla floor.
TINY: dict[str, Any] = {
    "train_steps": 30, "schedule.warmup_steps": 5, "eval.eval_every": 10,
    "eval.eval_batches": 2, "logging.log_every": 10, "checkpoint.save_every": 10,
    "model.n_layers": 1, "model.d_model": 32, "model.n_heads": 2, "model.n_kv_heads": 1,
    "model.d_ff": 64, "batch.global_batch": 4, "batch.seq_len": 32,
    "eval.tasks": "",  # the default experiment's smoke task: scored by the runs that test it
}

CHILDREN = REPO / "tests" / "children"

# LLVM's optimisation of the CPU code XLA emits is most of a tiny program's compile time; the
# suite's programs run for milliseconds, so it compiles them unoptimised (1.6x faster on the
# compile-heavy files; tests/conftest.py sets them). Tests compare programs compiled alike;
# commands outside the suite keep XLA's defaults (docs/decisions.md, "Tests in tiers").
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")


@dataclasses.dataclass
class Result:
  rc: int
  stdout: str
  stderr: str
  seconds: float
  compiles: int | None = None

  @property
  def error_lines(self) -> list[str]:
    return [line for line in self.stderr.splitlines() if line.strip()]


def fake_devices(n: int) -> dict[str, str]:
  """The XLA_FLAGS entry that gives a child `n` fake CPU devices, keeping the suite's own flags
  (tests/conftest.py)."""
  flags = os.environ.get("XLA_FLAGS", "")
  return {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={n}".strip()}


def optimised() -> dict[str, str]:
  """The XLA_FLAGS that give a child XLA's default optimisation back: for the few runs that
  execute for longer than they compile (a 200-step default-model run: 86 s unoptimised, 46 s
  optimised)."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  return {"XLA_FLAGS": " ".join(f for f in flags if f not in FAST_COMPILE_FLAGS)}


def child_env() -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
  return env


def run_module(module: str, *args: str, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """`python -m module args` from the repo root, as a user runs a console script; `env` adds
  to (or overrides) the child's environment."""
  return start(["-m", module, *map(str, args)], {**child_env(), **(env or {})}, timeout)


def start(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
  """`python ARGV` in a fresh process from the repo root (tests/launcher.py), output captured."""
  return launcher.run(argv, env, REPO, timeout, child_env())


def spawn(argv: list[str], out: str | os.PathLike, err: str | os.PathLike | None = None,
          env: dict[str, str] | None = None):
  """`python ARGV` started in the background from the repo root (tests/launcher.py), stdout to
  the file `out`, stderr to `err` (None: into `out`); `env` adds to the child's environment.
  Returns a handle with Popen's pid, poll, wait, kill, send_signal and returncode."""
  return launcher.spawn(argv, {**child_env(), **(env or {})}, REPO, child_env(), out, err)


def command(module: str, *args: str, timeout: float = 300,
            env: dict[str, str] | None = None) -> Result:
  """run_module as a Result (rc, stdout, stderr), for the one-line-error assertions."""
  proc = run_module(module, *args, timeout=timeout, env=env)
  return Result(proc.returncode, proc.stdout, proc.stderr, 0.0)


def python_json(program: str, *args: str, env: dict[str, str | None]) -> Any:
  """Run `python tests/children/<program> args` from the repo root in a fresh process (JAX
  starts there, not here) and return its last stdout line parsed as JSON. `env` overrides the
  child's environment; a None value removes the variable."""
  child = {**child_env(), "JAX_PLATFORMS": "cpu", **env}
  child = {k: v for k, v in child.items() if v is not None}
  proc = start([str(CHILDREN / program), *args], child, 120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.splitlines()[-1])


def tiny_flags(data_dir: str | None, overrides: dict[str, Any] | None = None) -> list[str]:
  """`--config.x=v` flags for the TINY run, with `overrides` replacing or adding fields."""
  fields = {**TINY, **(overrides or {})}
  if data_dir is not None:
    fields.setdefault("data.data_dir", data_dir)
  return [f"--config.{k}={v}" for k, v in fields.items()]


def run_main(*args: str, workdir: str | os.PathLike | None = None, config: str | None = CONFIG,
             count_compiles: bool = False, timeout: float = 300,
             env: dict[str, str] | None = None) -> Result:
  """`python -m train.main [--config] [--workdir] ARGS` from the repo root; `env` adds to the
  child's environment."""
  argv = ([f"--config={config}"] if config else []) + \
         ([f"--workdir={workdir}"] if workdir is not None else []) + list(args)
  env = {**child_env(), **(env or {})}
  count_file = None
  if count_compiles:
    fd, name = tempfile.mkstemp(prefix="pregate-compiles-")
    os.close(fd)
    count_file = Path(name)
    env[COUNT_ENV] = str(count_file)
    cmd = [str(CHILDREN / "counting_main.py"), *argv]
  else:
    cmd = ["-m", "train.main", *argv]
  t0 = time.perf_counter()
  proc = start(cmd, env, timeout)
  result = Result(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0)
  if count_file is not None:
    text = count_file.read_text()
    assert text, f"child wrote no compile count:\n{proc.stderr[-3000:]}"
    result.compiles = int(text)
    count_file.unlink()
  return result


def prepare_once(out_dir: Path) -> str:
  """Tokenize Tiny Shakespeare once into out_dir (the session's shared prepared data), with the
  data settings of CONFIG (one document, no end-of-text token, the tail held out)."""
  from train.data import prepare
  prepare.prepare(str(CORPUS), str(out_dir), "char", 0.1, eot_token="", val_split="tail")
  return str(out_dir)


def tiny_config(data_dir: str | None, overrides: dict[str, Any] | None = None):
  """The ConfigDict the CLI would build from CONFIG + tiny_flags (for in-process checks)."""
  from configs import shakespeare_char
  config = shakespeare_char.get_config()
  fields = {**TINY, **(overrides or {})}
  if data_dir is not None:
    fields.setdefault("data.data_dir", data_dir)
  for key, value in fields.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def snapshot(root: Path) -> dict[str, str]:
  """Every path under root -> sha256 of its bytes ('dir' for directories): listing + content."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
    for f in filenames:
      p = os.path.join(dirpath, f)
      out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
  return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
  return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def events(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
  return [r for r in records if r.get("event") == kind]


def checkpoint_steps(workdir: Path) -> list[int]:
  """Committed checkpoint steps on disk (orbax writes tmp dirs under other names first)."""
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def checkpoint_meta(workdir: Path, step: int) -> dict[str, Any]:
  return json.loads((Path(workdir) / "checkpoints" / str(step) / "meta" / "metadata").read_text())


def load_params(workdir: Path, step: int) -> dict[str, Any]:
  """A checkpoint's params as numpy arrays, restored by orbax onto one local device whatever
  mesh saved them (runs split a CPU host into several devices)."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  from train.ckpt.checkpointer import Checkpointer
  ckpt = Checkpointer(str(Path(workdir) / "checkpoints"), read_only=True)
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    got = ckpt.manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(fallback_sharding=one)))
    return jax.tree.map(np.asarray, got["params"])
  finally:
    ckpt.close()


def flat(tree: Any) -> dict[str, Any]:
  """'a/b/c' -> leaf, for comparing two trees leaf by leaf with readable failures."""
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf
          for path, leaf in leaves}


def assert_one_line_error(res: Result, *needles: str, rc: int = 2) -> str:
  """Exit `rc` (2: bad input; 3: a gate's refusal), no traceback, exactly one `ERROR:` line on
  stderr containing every needle."""
  out = res.stdout + res.stderr
  assert res.rc == rc, out[-3000:]
  assert "Traceback" not in out
  assert len(res.error_lines) == 1, res.stderr[-3000:]
  line = res.error_lines[0]
  assert line.startswith("ERROR:"), line
  for needle in needles:
    assert needle in line, f"{needle!r} missing from: {line}"
  return line


def build_model(cfg: Any, seed: int = 0) -> Any:
  """A real (allocated), unsharded model on the default device."""
  from flax import nnx

  from models.transformer import Transformer
  with nnx.use_eager_sharding(False):
    return Transformer(cfg, rngs=nnx.Rngs(seed))


class Tty(io.StringIO):
  """A stream that says it is a terminal (progress bars draw on it)."""

  def isatty(self) -> bool:
    return True
