"""GPU benchmark of the hot path: ~0.5B Llama and Qwen2-0.5B-shaped models at T = 4096 / 2048.

    python scripts/gpu_bench.py                 # all GPU variants (~8 min on one H200)
    python scripts/gpu_bench.py --variants=llama_T4096,qwen_T2048 --steps=20
    python scripts/gpu_bench.py --toy           # toy sizes: runs on a CPU in seconds (a test)

Each variant runs in its own subprocess, so an out-of-memory (or any crash) is recorded as that
variant's result and the others still run. Synthetic tokens (one fixed random batch, so the
loss must fall from ~ln V as the model memorizes it). Per variant: compile s, step ms
(median), tokens/s, MFU (model FLOPs, causal attention, against the bf16 spec peak), HFU (XLA's
cost analysis of an unrolled twin; it computes the full T x T attention square, and counts
nothing inside cuDNN calls), peak device memory, loss sanity, the
float32 GEMMs and cuDNN fused-attention calls in the compiled program, and the jaxpr's
float32 x bf16 dense matmuls (0 expected). Results print as `RESULT {json}` lines and a table.

The Qwen2-shaped variants carry Qwen2's q/k/v biases (`family="qwen2", qkv_bias=True`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_BF16 = {"dtype": "bfloat16", "param_dtype": "float32"}
_LLAMA = {"vocab_size": 32_000, "d_model": 1536, "n_layers": 16, "n_heads": 12, "n_kv_heads": 4,
          "d_ff": 4096, "rope_theta": 500_000.0, "tie_embeddings": False, "norm_eps": 1e-5}
_QWEN = {"vocab_size": 151_936, "d_model": 896, "n_layers": 24, "n_heads": 14, "n_kv_heads": 2,
         "d_ff": 4864, "rope_theta": 1_000_000.0, "tie_embeddings": True, "norm_eps": 1e-6,
         "family": "qwen2", "qkv_bias": True}
# Scanned layers: the training state holds the blocks stacked, so the step's compile time is
# flat in depth (XLA:CPU, 4 -> 32 layers: 1.25x scanned, 5x unrolled; docs/benchmarks.md). The
# `_unrolled` extra measures what the loop costs at run time on the GPU.
_FAST = {"attention": "auto", "scan_layers": True, "remat": "none"}


def _variant(model: dict, t: int, batch: int, **over) -> dict:
  return {"model": {**model, **_BF16, **_FAST, "max_seq_len": t, **over}, "batch": batch,
          "seq_len": t}


VARIANTS = {
    "llama_T4096": _variant(_LLAMA, 4096, 8, loss_chunk=1024),
    "llama_T2048": _variant(_LLAMA, 2048, 16, loss_chunk=512),
    "qwen_T4096": _variant(_QWEN, 4096, 8, loss_chunk=512),
    "qwen_T2048": _variant(_QWEN, 2048, 16, loss_chunk=256),
    # Extras (not in the default run): what each choice is worth.
    "llama_T4096_xla_attention": _variant(_LLAMA, 4096, 8, loss_chunk=1024, attention="xla"),
    "llama_T4096_remat": _variant(_LLAMA, 4096, 8, loss_chunk=1024,
                                  remat="minimal_with_context"),
    "qwen_T4096_full_logits": _variant(_QWEN, 4096, 4, loss_chunk=0),
    "llama_T4096_unrolled": _variant(_LLAMA, 4096, 8, loss_chunk=1024, scan_layers=False),
}
DEFAULT = ("llama_T4096", "llama_T2048", "qwen_T4096", "qwen_T2048")
_TOY_LLAMA = {**_LLAMA, "vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4,
              "n_kv_heads": 2, "d_ff": 128}
_TOY_QWEN = {**_QWEN, "vocab_size": 2048, "d_model": 64, "n_layers": 2, "n_heads": 4,
             "n_kv_heads": 1, "d_ff": 160}
TOY_VARIANTS = {
    "toy_llama_T64": _variant(_TOY_LLAMA, 64, 4, loss_chunk=16),
    "toy_qwen_T32": _variant(_TOY_QWEN, 32, 4, loss_chunk=8, scan_layers=False),
    # cuDNN attention cannot run on a CPU: recorded as this variant's error, not fatal.
    "toy_llama_cudnn": _variant(_TOY_LLAMA, 64, 4, attention="cudnn"),
}
TOY_DEFAULT = ("toy_llama_T64", "toy_qwen_T32")


def classify_failure(rc: int | None, stderr: str) -> str:
  """'oom', 'timeout' or 'error: <last error line>' for a failed variant process."""
  if rc is None:
    return "timeout"
  text = stderr.lower()
  if "resource_exhausted" in text or "out of memory" in text or "oom" in text.split():
    return "oom"
  lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
  errors = [ln for ln in lines if "Error" in ln or "error" in ln]
  return "error: " + ((errors or lines or [f"exit {rc}"])[-1])[:300]


def _executed_flops(cfg, tx, config, batch) -> float:
  """FLOPs the step executes (HFU), from XLA's cost analysis of an unrolled, full-logits twin
  lowered (not compiled): XLA counts a while loop's body once, so the scanned layers and the
  chunked loss would read low. The chunked loss's recomputed logits are added back."""
  import dataclasses

  import jax

  from train.state import step as step_lib
  twin = dataclasses.replace(cfg, scan_layers=False, loss_chunk=0)
  graphdef, init = step_lib.init_fn(twin, tx, 0)  # per-layer state: shapes, not `state`'s
  lowered = jax.jit(step_lib.make_train_step(graphdef, tx, step_lib.lr_schedule(config))
                    ).lower(jax.eval_shape(init), batch)
  cost = lowered.cost_analysis() or {}
  tokens = batch["inputs"].size
  recompute = 2.0 * tokens * cfg.d_model * cfg.vocab_size if cfg.loss_chunk else 0.0
  return float(cost.get("flops", 0.0)) + recompute


def run_variant(name: str, spec: dict, steps: int, warmup: int) -> dict:
  """Child side: build, compile, time and inspect one variant; returns its result row."""
  sys.path.insert(0, str(REPO))
  from train.runtime import gpu_runtime
  settings = gpu_runtime.apply(None, os.environ.get("PREGATE_XLA_CACHE"))

  import jax
  import jax.numpy as jnp
  import numpy as np

  from configs import base
  from models.config import ModelConfig
  from models.params import count_params
  from train.state import flops
  from train.state import step as step_lib

  cfg = ModelConfig.from_dict(spec["model"])
  config = base.get_config()
  config.optimizer.update(lr=1e-3)
  config.schedule.update(warmup_steps=2, decay_steps=1000)
  tx, b, t = step_lib.make_optimizer(config), spec["batch"], spec["seq_len"]
  graphdef, init = step_lib.init_fn(cfg, tx, 0)
  step = jax.jit(step_lib.make_train_step(graphdef, tx, step_lib.lr_schedule(config)),
                 donate_argnums=0)
  toks = np.random.default_rng(0).integers(0, cfg.vocab_size, (b, t + 1), dtype=np.int32)
  batch = {"inputs": jnp.asarray(toks[:, :-1]), "targets": jnp.asarray(toks[:, 1:])}
  state = jax.jit(init)()
  jaxpr_dots = flops.dot_signatures(jax.make_jaxpr(step)(state, batch))
  hw_flops = _executed_flops(cfg, tx, config, batch)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  losses, times = [], []
  for i in range(warmup + steps):
    t1 = time.perf_counter()
    state, metrics = compiled(state, batch)
    losses.append(float(metrics["loss"]))  # blocks: the step is done
    if i >= warmup:
      times.append(time.perf_counter() - t1)
  step_s = statistics.median(times)
  tokens = b * t
  peak, peak_src = flops.device_peak(cfg.dtype)
  n_params = count_params(cfg).total
  stats = flops.compiled_stats(compiled)
  hbm = flops.device_peak_memory()
  return {
      "variant": name, "status": "ok", "device": jax.devices()[0].device_kind,
      "params": n_params, "batch": b, "seq_len": t, "attention": cfg.attention,
      "remat": cfg.remat, "loss_chunk": cfg.loss_chunk, "scan_layers": cfg.layers_scanned(),
      "compile_s": round(compile_s, 2),
      "step_ms": round(1e3 * step_s, 2), "tokens_per_s": round(tokens / step_s),
      "mfu": flops.flops_per_token(cfg, n_params, t) * tokens / step_s / peak,
      "hfu": hw_flops / step_s / peak, "peak_source": peak_src,
      "peak_hbm_gib": round((hbm if hbm is not None else stats.get("memory_bytes", 0))
                            / 2**30, 3),
      "hbm_source": "device peak_bytes_in_use" if hbm is not None else "XLA memory analysis",
      "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
      "ln_vocab": round(math.log(cfg.vocab_size), 4),
      "loss_sane": bool(all(map(math.isfinite, losses)) and abs(losses[0] - math.log(
          cfg.vocab_size)) < 1.0 and losses[-1] < losses[0]),
      **{f"hlo_{k}": v for k, v in flops.hlo_gemm_counts(compiled.as_text()).items()},
      "jaxpr_dense_mixed_dots": sum(n for (a, w, _, batched), n in jaxpr_dots.items()
                                    if not batched and a != w),
      "runtime": gpu_runtime.describe(settings),
  }


def run_all(names: list[str], toy: bool, steps: int, warmup: int, timeout: float) -> list[dict]:
  """Parent side: one subprocess per variant; a failure becomes that variant's row."""
  rows = []
  for name in names:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--child={name}",
           f"--steps={steps}", f"--warmup={warmup}"] + (["--toy"] if toy else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
      rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
      rc, out, err = None, e.stdout or "", e.stderr or ""
      out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
    results = [ln[len("RESULT "):] for ln in out.splitlines() if ln.startswith("RESULT ")]
    row = json.loads(results[-1]) if rc == 0 and results else {
        "variant": name, "status": classify_failure(rc, err)}
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(row), flush=True)
    rows.append(row)
  return rows


_COLUMNS = ("variant", "status", "compile_s", "step_ms", "tokens_per_s", "mfu", "hfu",
            "peak_hbm_gib", "loss_first", "loss_last", "loss_sane", "hlo_gemm_f32",
            "hlo_fused_attention", "jaxpr_dense_mixed_dots")


def table(rows: list[dict]) -> str:
  def cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) and not isinstance(v, bool) else str(v)
  cells = [[cell(r.get(c, "")) for c in _COLUMNS] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(_COLUMNS)]
  lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths))]
  lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--toy", action="store_true", help="toy sizes (CPU)")
  ap.add_argument("--variants", default="", help="comma-separated names (default: the set)")
  ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
  ap.add_argument("--warmup", type=int, default=2, help="untimed steps after compile")
  ap.add_argument("--timeout", type=float, default=240.0, help="seconds per variant")
  ap.add_argument("--out", default="", help="also write the rows as JSON lines here")
  ap.add_argument("--child", default="", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  known = TOY_VARIANTS if args.toy else VARIANTS
  if args.child:
    print("RESULT " + json.dumps(run_variant(args.child, known[args.child], args.steps,
                                             args.warmup)), flush=True)
    return 0
  names = [n for n in args.variants.split(",") if n] or list(TOY_DEFAULT if args.toy
                                                             else DEFAULT)
  unknown = [n for n in names if n not in known]
  if unknown:
    print(f"ERROR: ConfigError: unknown variant(s) {unknown}; known: {sorted(known)}",
          file=sys.stderr)
    return 2
  if args.steps < 1 or args.warmup < 0:
    print(f"ERROR: ConfigError: --steps must be >= 1 and --warmup >= 0, got {args.steps} and "
          f"{args.warmup}", file=sys.stderr)
    return 2
  rows = run_all(names, args.toy, args.steps, args.warmup, args.timeout)
  print(table(rows))
  if args.out:
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
  return 0


if __name__ == "__main__":
  sys.exit(main())
