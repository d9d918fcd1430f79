"""One GPU check: install the GPU extra, run the correctness checks and the benchmark matrix, and
write one figures file, inside a time budget, so a short GPU loan yields numbers, not set-up.

    python scripts/gpu_bench.py --out gpu_figures.json     # on the GPU host, repo root (<= 8 min)
    python scripts/gpu_bench.py --no-install --rows=llama_T4096,qwen_T2048 --steps=20
    python scripts/gpu_bench.py --dry_run --out /tmp/f.json  # CPU, toy sizes, no install (a test)

1. `pip install -e .[gpu]` (jax[cuda12]==0.10.2) unless --no-install; a failed install is
   written to the figures file and ends the run (exit 1, one line). A dry run installs nothing.
2. A probe: backend, device, jax/jaxlib versions (a real run refuses anything but a GPU).
3. Checks: `attention` (einsum, xla and cuDNN outputs and gradients in bf16 against a float32
   reference, models/attention.py), `bf16_step` (the run's step in bf16: finite, within 1% of
   float32's loss, no float32 x bf16 dense matmul), `scan_layers` (scanned == unrolled loss),
   `memory` (gates/memory.estimate against XLA's compiled figure, train/run/memory_check.py,
   over every matrix row that compiled; within the memory-fit contract's tolerance).
4. The matrix: per row the step RunSetup.build compiles for a run, timed by RunSetup.time_steps
   (median step, tokens/s, MFU, HFU, peak memory, loss sanity, GEMM/fused-attention counts).
Each probe, check and row runs in its own process (scripts/gpu_bench_items.py; this one never
imports JAX, which it may be about to install), so an out-of-memory or a crash is that item's
status and the rest still run. One budget (--budget_s, from the start, install included) covers
everything; once spent, what is left is recorded as skipped. The file is rewritten after every
item, so a run cut short still leaves its figures: {schema, date, command, dry_run, budget_s,
steps, warmup, install: {status, ...}, device: {backend, device_kind, jax, jaxlib, ...}, checks:
[{name, status, figures, detail, wall_s}], rows: [{name, status, wall_s, figures...}], wall_s,
error (when it stopped early)}. Exit 0 when every check passed or was skipped (a dry run's toy
`memory` check is not counted), 1 when one failed or the run stopped early, 2 for bad flags.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "pregate-gpu-figures-v1"
PIP_INSTALL = [sys.executable, "-m", "pip", "install", "--progress-bar", "off", "-e", ".[gpu]"]
_BF16 = {"dtype": "bfloat16", "param_dtype": "float32", "attention": "auto", "remat": "none",
         "scan_layers": True}
FAMILIES = {  # ~0.5B Llama; Qwen2-0.5B's shape (q/k/v biases, tied 151,936-id head)
    "llama": {"vocab_size": 32_000, "d_model": 1536, "n_layers": 16, "n_heads": 12,
              "n_kv_heads": 4, "d_ff": 4096, "rope_theta": 500_000.0, "tie_embeddings": False,
              "norm_eps": 1e-5, **_BF16},
    "qwen": {"vocab_size": 151_936, "d_model": 896, "n_layers": 24, "n_heads": 14,
             "n_kv_heads": 2, "d_ff": 4864, "rope_theta": 1_000_000.0, "tie_embeddings": True,
             "norm_eps": 1e-6, "family": "qwen2", "qkv_bias": True, **_BF16},
}
TOY = {"llama": {**FAMILIES["llama"], "vocab_size": 512, "d_model": 64, "n_layers": 2,
                 "n_heads": 4, "n_kv_heads": 2, "d_ff": 128},
       "qwen": {**FAMILIES["qwen"], "vocab_size": 2048, "d_model": 64, "n_layers": 2,
                "n_heads": 4, "n_kv_heads": 1, "d_ff": 160}}
# name: (family, seq_len, batch, model overrides), in priority order (the budget cuts the tail).
# "default" is configs/base.py's own model and batch as they stand (a dry run: 8 sequences).
# A dry run divides seq_len and loss_chunk by 64 and halves the batch: same knobs, toy sizes.
ROWS: dict[str, tuple[str, int, int, dict[str, Any]]] = {
    "default": ("default", 0, 0, {}),
    "llama_T4096": ("llama", 4096, 8, {"loss_chunk": 1024}),
    "llama_T4096_xla": ("llama", 4096, 8, {"loss_chunk": 1024, "attention": "xla"}),
    "llama_T4096_unrolled": ("llama", 4096, 8, {"loss_chunk": 1024, "scan_layers": False}),
    "llama_T2048": ("llama", 2048, 4, {"loss_chunk": 512}),
    "llama_T2048_fp32": ("llama", 2048, 4, {"loss_chunk": 512, "dtype": "float32"}),
    "llama_T2048_einsum": ("llama", 2048, 4, {"loss_chunk": 512, "attention": "einsum"}),
    "qwen_T2048": ("qwen", 2048, 16, {"loss_chunk": 256}),
}
CHECKS = ("attention", "bf16_step", "scan_layers")  # `memory` is judged from the rows
# A dry run compiles unoptimised, as the test suite does (tests/helpers.py): half the compile
# time, and its CPU figures are not measurements anyway.
# Its items also share a throwaway compilation cache (the rows' inits repeat): ~10% less time.
FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
DRY_CACHE_ENV = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}


def spec(name: str, toy: bool) -> dict[str, Any]:
  """A row's model dict, batch and sequence length (configs/base.py fills the rest, None)."""
  family, t, batch, over = ROWS[name]
  if family == "default":
    return {"model": {}, "batch": 8 if toy else None, "seq_len": None}
  model = {**(TOY if toy else FAMILIES)[family], **over}
  if toy:
    t, batch = t // 64, max(2, batch // 2)
    model["loss_chunk"] = model.get("loss_chunk", 0) // 64
  return {"model": {**model, "max_seq_len": t}, "batch": batch, "seq_len": t}


def classify_failure(rc: int | None, stderr: str) -> str:
  """'oom', 'timeout' or 'error: <last error line>' for a failed child process."""
  if rc is None:
    return "timeout"
  text = stderr.lower()
  if "resource_exhausted" in text or "out of memory" in text or "oom" in text.split():
    return "oom"
  lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
  errors = [ln for ln in lines if "Error" in ln or "error" in ln]
  return "error: " + ((errors or lines or [f"exit {rc}"])[-1])[:300]


def run_child(item: str, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
  """`item` in its own process; a crash, OOM or timeout becomes its status (with whatever it
  printed as PARTIAL before failing)."""
  cmd = [sys.executable, str(REPO / "scripts" / "gpu_bench_items.py"), item,
         f"--steps={args.steps}", f"--warmup={args.warmup}"] + ["--dry_run"] * args.dry_run
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
  if args.dry_run:
    flags = env.get("XLA_FLAGS", "")
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(
        [flags, *(f for f in FAST_COMPILE if f.split("=")[0] not in flags)]).strip())
    if args.cache_dir and "JAX_COMPILATION_CACHE_DIR" not in env:
      env.update(JAX_COMPILATION_CACHE_DIR=args.cache_dir, **DRY_CACHE_ENV)
  try:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=max(timeout, 1.0))
    rc, out, err = proc.returncode, proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    rc, out, err = None, e.stdout or "", e.stderr or ""
    out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
  found = {}
  for line, tag in itertools.product(out.splitlines(), ("RESULT", "PARTIAL")):
    if line.startswith(tag + " "):
      with contextlib.suppress(ValueError):  # a line cut short by a kill
        found[tag] = json.loads(line[len(tag) + 1:])
  if rc == 0 and "RESULT" in found:
    return found["RESULT"]
  return {"name": item.split(":", 1)[1], **found.get("PARTIAL", {}),
          "status": classify_failure(rc, err), "stderr_tail": err[-2000:]}


def run_items(items: list[str], run_one: Callable[[str, float], dict[str, Any]],
              deadline: float, timeout: float, into: list[dict[str, Any]],
              done: Callable[[], Any] = lambda: None,
              clock: Callable[[], float] = time.monotonic) -> list[dict[str, Any]]:
  """Each item, appended to `into`, with at most min(`timeout`, time left); once the deadline
  has passed the rest are 'skipped'. `done` runs after each (the figures file is rewritten)."""
  for item in items:
    left, t0 = deadline - clock(), clock()
    into.append({"name": item.split(":", 1)[1], "status": "skipped",
                 "detail": "time budget spent"} if left <= 0 else
                {**run_one(item, min(left, timeout)), "wall_s": round(clock() - t0, 1)})
    done()
  return into


def memory_check(rows: list[dict[str, Any]], dry_run: bool) -> dict[str, Any]:
  """The analytic estimate against XLA's compiled figure, over every row that compiled. A dry
  run's toy bf16 models lie outside the float32 matrix the model is held to on CPU
  (tests/test_memory_model.py): judged and recorded, not counted in the exit status."""
  measured = [r for r in rows if "memory_xla_bytes" in r]
  if not measured:
    return {"name": "memory", "status": "skipped", "figures": {},
            "detail": "no matrix row compiled"}
  figures = {r["name"]: {k: r[k] for k in ("memory_xla_bytes", "memory_estimate_bytes",
                                           "memory_error", "memory_phase", "capacity_bytes")}
             for r in measured}
  worst = max(measured, key=lambda r: abs(r["memory_error"]))
  ok = all(abs(r["memory_error"]) <= r["memory_tolerance"] for r in measured)
  return {"name": "memory", "status": "pass" if ok else "fail", "figures": figures,
          "detail": f"worst {worst['name']} {worst['memory_error']:+.1%} (tolerance "
                    f"{worst['memory_tolerance']:.0%})" + ("; dry run: not counted" * dry_run)}


def install(cmd: list[str], timeout: float) -> dict[str, Any]:
  """Run the install; its status, seconds, and the tail of its output for the figures file."""
  t0, rec = time.monotonic(), {"command": shlex.join(cmd)}
  try:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    rc, text = proc.returncode, proc.stdout + proc.stderr
  except subprocess.TimeoutExpired:
    rc, text = None, f"timed out after {timeout:.0f} s"
  except OSError as e:
    rc, text = -1, f"{type(e).__name__}: {e}"
  lines = [ln for ln in text.splitlines() if ln.strip()]
  return {**rec, "status": "ok" if rc == 0 else "failed", "rc": rc,
          "seconds": round(time.monotonic() - t0, 1), "tail": lines[-15:],
          "error": "" if rc == 0 else (lines or ["no output"])[-1][:300]}


def table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
  def cell(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
  cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
                   for row in [list(columns), *cells])


def _args(argv: list[str] | None) -> argparse.Namespace:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="gpu_figures.json", help="the figures file (JSON)")
  ap.add_argument("--dry_run", "--toy", action="store_true",
                  help="CPU, toy sizes, nothing installed: the same code path, in ~1 min")
  ap.add_argument("--no-install", "--no_install", dest="no_install", action="store_true",
                  help="do not pip install -e .[gpu] first")
  ap.add_argument("--budget_s", type=float, default=480.0,
                  help="seconds for everything, install included; then the rest is skipped")
  ap.add_argument("--rows", "--variants", default="", help="comma-separated rows (default all)")
  ap.add_argument("--steps", type=int, default=None, help="timed steps per row (10; dry 2)")
  ap.add_argument("--warmup", type=int, default=None, help="untimed steps (2; dry 1)")
  ap.add_argument("--timeout", type=float, default=240.0, help="seconds per item at most")
  args = ap.parse_args(argv)
  args.steps = args.steps if args.steps is not None else (2 if args.dry_run else 10)
  args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 2)
  return args


def main(argv: list[str] | None = None) -> int:
  args = _args(argv)
  names = [n for n in args.rows.split(",") if n] or list(ROWS)
  bad = [n for n in names if n not in ROWS] + ["--steps < 1"] * (args.steps < 1) + \
      ["--warmup < 0"] * (args.warmup < 0) + ["--budget_s <= 0"] * (args.budget_s <= 0)
  if bad:
    print(f"ERROR: ConfigError: {', '.join(bad)} (rows: {', '.join(ROWS)})", file=sys.stderr)
    return 2
  figures: dict[str, Any] = {
      "schema": SCHEMA, "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "command": shlex.join(["python", "scripts/gpu_bench.py",
                             *(sys.argv[1:] if argv is None else argv)]),
      "dry_run": args.dry_run, "budget_s": args.budget_s, "steps": args.steps,
      "warmup": args.warmup, "install": {}, "device": {}, "checks": [], "rows": []}
  out = Path(args.out)
  write = lambda: out.write_text(json.dumps(figures, indent=1) + "\n")
  try:
    write()  # a path that cannot be written fails now, not after the loan's minutes
  except OSError as e:
    print(f"ERROR: ConfigError: --out={out}: {e.strerror or e}", file=sys.stderr)
    return 2
  with tempfile.TemporaryDirectory(prefix="pregate-gpu-bench-") as tmp:
    args.cache_dir = tmp if args.dry_run else ""
    return run(args, names, figures, write)


def run(args: argparse.Namespace, names: list[str], figures: dict[str, Any],
        write: Callable[[], Any]) -> int:
  """Install, probe, checks, rows, each recorded in `figures` (rewritten by `write`)."""
  start, out = time.monotonic(), args.out
  deadline = start + args.budget_s

  def fail(line: str) -> int:
    figures.update(error=line, wall_s=round(time.monotonic() - start, 1))
    write()
    print(f"ERROR: {line}; figures in {out}", file=sys.stderr)
    return 1

  why = "dry run" if args.dry_run else "--no-install" if args.no_install else ""
  inst = figures["install"] = ({"status": "skipped", "detail": why} if why else
                               install(PIP_INSTALL, max(deadline - time.monotonic(), 1.0)))
  if inst["status"] != "ok" and not why:
    return fail(f"pip install -e '.[gpu]' failed (exit {inst['rc']}): {inst['error']} "
                "(installed already? rerun with --no-install)")
  dev = figures["device"] = run_child("probe:device", args, min(args.timeout, 120.0))
  if dev["status"] != "ok":
    return fail(f"JAX did not start: {dev['status']}")
  if not args.dry_run and dev["backend"] != "gpu":
    return fail(f"JAX runs on {dev['backend']}, not a GPU (no CUDA plugin or driver?); "
                "--dry_run is the CPU mode")
  run_one = lambda item, left: run_child(item, args, left)
  run_items([f"check:{c}" for c in CHECKS], run_one, deadline, args.timeout,
            figures["checks"], write)
  run_items([f"row:{n}" for n in names], run_one, deadline, args.timeout, figures["rows"],
            write)
  figures["checks"].append(memory_check(figures["rows"], args.dry_run))
  figures["wall_s"] = round(time.monotonic() - start, 1)
  write()
  print(f"{dev['device_kind']} ({dev['backend']}), jax {dev['jax']}, jaxlib {dev['jaxlib']}, "
        f"{figures['wall_s']} s of {args.budget_s:.0f}")
  print(table(figures["checks"], ("name", "status", "wall_s", "detail")))
  print(table(figures["rows"], ("name", "status", "wall_s", "compile_s", "step_ms",
                                "tokens_per_s", "mfu", "hfu", "peak_hbm_gib", "memory_error",
                                "loss_first", "loss_last", "loss_sane", "hlo_fused_attention")))
  failed = [c["name"] for c in figures["checks"] if c["status"] not in ("pass", "skipped")
            and not (args.dry_run and c["name"] == "memory")]
  if failed:
    print(f"ERROR: check(s) failed: {', '.join(failed)}; figures in {out}", file=sys.stderr)
    return 1
  print(f"figures: {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
