"""One item of scripts/gpu_bench.py, in its own process: the probe, a check, or a matrix row.

    PYTHONPATH=$PWD python scripts/gpu_bench_items.py row:llama_T4096 [--dry_run] [--steps=10]

Prints `RESULT {json}`; a row first prints `PARTIAL {json}` (its memory figures, once
compiled), so an out-of-memory while stepping still leaves them. A file of its own because
gpu_bench.py runs before the GPU extra is installed and never imports JAX; this one does. The
figures come from the repo's own code: the step `RunSetup.build` compiles for a run, timed by
`RunSetup.time_steps`, gates/memory.estimate against train/run/memory_check.compiled_need,
models/attention.causal_attention per backend, train/state/flops for MFU and HLO counts.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata as md
import itertools
import json
import math
import statistics
from typing import Any

import gpu_bench
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from configs import base
from core import contracts
from gates import config_schema, device_memory, memory
from models import attention
from models.config import ModelConfig
from models.params import count_params
from train.run import memory_check
from train.run.setup import RunSetup
from train.runtime import compile_cache, gpu_runtime, platform
from train.state import flops, sharding
from train.state import step as step_lib

TOL_BF16, TOL_SCAN, TOL_ATTN = 1e-2, 1e-4, 5e-2  # relative; see each check


def setup(s: dict[str, Any]) -> tuple[Any, RunSetup]:
  """(config, RunSetup) of the run's own compiled step for spec `s`, as `train.main` builds it;
  platform.check refuses what this host cannot run in one line (cuDNN on a CPU)."""
  c = base.get_config()
  c.model.update(**s["model"])
  c.batch.update(**{k: v for k, v in (("global_batch", s["batch"]), ("seq_len", s["seq_len"]))
                    if v is not None})
  c.optimizer.update(lr=1e-3)
  c.schedule.update(warmup_steps=2, decay_steps=1000)
  c.logging.weight_norms = False  # one compiled step, the one timed (no log-step variant)
  model_cfg = ModelConfig.from_dict(c.model.to_dict())
  platform.check(model_cfg)
  return c, RunSetup.build(c, model_cfg)


def fixed_batch(config: Any, seed: int = 0) -> dict[str, np.ndarray]:
  """One fixed random batch: the loss must start near ln V and fall as the model memorizes it."""
  b = config.batch
  toks = np.random.default_rng(seed).integers(0, config.model.vocab_size,
                                              (b.global_batch, b.seq_len + 1), dtype=np.int32)
  return {"inputs": toks[:, :-1], "targets": toks[:, 1:]}


def losses(rs: RunSetup, stored: Any, batch: dict[str, np.ndarray], n: int) -> list[float]:
  """Losses of `n` steps of rs's compiled step from a copy of a stored-layout state (the step
  donates its input; the stored layout enters scanned and unrolled layouts alike)."""
  state, out = rs.state.to_train(jax.tree.map(jnp.copy, stored)), []
  for _ in range(n):
    state, m = rs.compiled(state, rs.to_global(batch))
    out.append(float(m["loss"]))
  return out


def check_model(toy: bool, **over: Any) -> dict[str, Any]:
  """The checks' model: toy, or the ~0.5B Llama's width at 4 (or 8) layers, T = 1024."""
  m = {**(gpu_bench.TOY if toy else gpu_bench.FAMILIES)["llama"], "n_layers": 2 if toy else 4,
       **over}
  t, b = (32, 4) if toy else (1024, 8)
  return {"model": {**m, "max_seq_len": t}, "batch": b, "seq_len": t}


def check_attention(toy: bool) -> dict[str, Any]:
  """Each backend's bf16 output and q/k/v gradients against einsum in float32 at full matmul
  precision: max |diff|, and relative to the reference's max |value| (pass: <= 5e-2, the bound
  tests/test_bf16.py holds bf16 gradients to); and each pair of backends. cuDNN must run on a
  GPU; on a CPU its error is recorded."""
  b, t, h, kv, d = (2, 64, 4, 2, 16) if toy else (4, 2048, 16, 4, 128)
  rng = np.random.default_rng(0)
  args = [rng.standard_normal(s).astype(np.float32)
          for s in ((b, t, h, d), (b, t, kv, d), (b, t, kv, d), (b, t, h, d))]

  def run(impl: str, dtype: Any) -> list[np.ndarray]:
    def f(q, k, v, cot):
      out, vjp = jax.vjp(lambda *a: attention.causal_attention(*a, impl), q, k, v)
      return (out, *vjp(cot))
    return [np.asarray(x, np.float32)
            for x in jax.jit(f)(*(jnp.asarray(a, dtype) for a in args))]

  with jax.default_matmul_precision("highest"):
    ref = run("einsum", jnp.float32)
  names = ("out", "dq", "dk", "dv")
  diff = lambda xs, ys: {n: float(np.abs(x - y).max()) for n, x, y in zip(names, xs, ys)}
  scale = {n: float(np.abs(r).max()) for n, r in zip(names, ref)}
  got, figures, worst = {}, {"shape_bthkd": [b, t, h, kv, d], "ref_max_abs": scale}, {}
  for impl in ("einsum", "xla", "cudnn"):
    try:
      got[impl] = run(impl, jnp.bfloat16)
    except Exception as e:  # cuDNN on a CPU; on a GPU this fails the check
      figures[f"{impl}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
      continue
    figures[f"{impl}_vs_f32"] = diff(got[impl], ref)
    worst[impl] = max(figures[f"{impl}_vs_f32"][n] / scale[n] for n in names)
  for a, c in itertools.combinations(got, 2):
    figures[f"{a}_vs_{c}"] = diff(got[a], got[c])
  need = {"einsum", "xla"} | ({"cudnn"} if jax.default_backend() == "gpu" else set())
  ok = need <= set(worst) and all(w <= TOL_ATTN for w in worst.values())
  detail = ", ".join(f"{k} {v:.2e}" for k, v in worst.items()) + " max rel diff vs f32"
  return {"status": "pass" if ok else "fail", "figures": {**figures, "max_rel": worst},
          "detail": detail + "".join(f"; {k} missing" for k in sorted(need - set(worst)))}


def check_bf16_step(toy: bool) -> dict[str, Any]:
  """Three steps of the run's step in bf16 and in float32 from the same parameters: every loss
  finite and within 1% of float32's (tests/test_bf16.py's bound); the bf16 step's dense
  matmuls all bf16 x bf16 in its jaxpr."""
  runs, hlo, stored = {}, {}, None
  for dtype in ("float32", "bfloat16"):
    config, rs = setup(check_model(toy, dtype=dtype))
    stored = rs.state.to_stored(rs.state.fresh_state()) if stored is None else stored
    runs[dtype] = losses(rs, stored, fixed_batch(config), 3)
    hlo[dtype] = flops.hlo_gemm_counts(rs.compiled.as_text())
  step = step_lib.make_train_step(rs.state.graphdef, rs.tx, step_lib.lr_schedule(config),
                                  weight_norms=False, spike_window=config.guard.spike_window)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in fixed_batch(config).items()}
  dots = flops.dot_signatures(jax.make_jaxpr(step)(rs.state.abstract_state(), batch))
  mixed = sum(n for (a, w, _, batched), n in dots.items() if not batched and a != w)
  rel = max(abs(b - f) / abs(f) for b, f in zip(runs["bfloat16"], runs["float32"]))
  ok = all(map(math.isfinite, runs["bfloat16"])) and rel < TOL_BF16 and mixed == 0
  return {"status": "pass" if ok else "fail",
          "figures": {"losses": runs, "max_rel_diff": rel, "jaxpr_dense_mixed_dots": mixed,
                      "hlo": hlo, "attention_bf16": attention.resolve(rs.model_cfg)},
          "detail": f"loss rel diff {rel:.2e} (< {TOL_BF16}), mixed dots {mixed}"}


def check_scan_layers(toy: bool) -> dict[str, Any]:
  """Three float32 steps of the unrolled and the scanned step from the same parameters (the
  third loss follows an update): equal within 1e-4 relative. Compiled at full float32 matmul
  precision: a GPU's default TF32 would blur the comparison. Compile seconds of each too."""
  runs, compile_s, stored = {}, {}, None
  for scan in (False, True):
    with jax.default_matmul_precision("highest"):
      config, rs = setup(check_model(toy, dtype="float32", scan_layers=scan,
                                     n_layers=4 if toy else 8))
    stored = rs.state.to_stored(rs.state.fresh_state()) if stored is None else stored
    runs[f"scan={scan}"] = losses(rs, stored, fixed_batch(config), 3)
    compile_s[f"scan={scan}"] = round(rs.compile_s, 2)
  rel = max(abs(a - b) / abs(b) for a, b in zip(runs["scan=True"], runs["scan=False"]))
  return {"status": "pass" if rel <= TOL_SCAN else "fail",
          "figures": {"losses": runs, "max_rel_diff": rel, "compile_s": compile_s},
          "detail": f"loss rel diff {rel:.2e} (<= {TOL_SCAN})"}


CHECKS = {"attention": check_attention, "bf16_step": check_bf16_step,
          "scan_layers": check_scan_layers}  # gpu_bench.CHECKS names them, in their order


def executed_flops(rs: RunSetup, config: Any, batch: dict[str, np.ndarray]) -> float:
  """FLOPs the step executes (HFU), from XLA's cost analysis of an unrolled, full-logits twin
  lowered (not compiled): XLA counts a while loop's body once, so the scanned layers and the
  chunked loss would read low. The chunked loss's recomputed logits are added back. Nothing
  inside a cuDNN call is counted."""
  cfg = rs.model_cfg
  graphdef, init = step_lib.init_fn(dataclasses.replace(cfg, scan_layers=False, loss_chunk=0),
                                    rs.tx, 0)
  step = step_lib.make_train_step(graphdef, rs.tx, step_lib.lr_schedule(config),
                                  weight_norms=False, spike_window=config.guard.spike_window)
  cost = jax.jit(step).lower(jax.eval_shape(init), batch).cost_analysis() or {}
  recompute = 2.0 * batch["inputs"].size * cfg.d_model * cfg.vocab_size if cfg.loss_chunk else 0
  return float(cost.get("flops", 0.0)) + recompute


def run_row(name: str, toy: bool, steps: int, warmup: int) -> dict[str, Any]:
  """Compile, judge memory (printed at once), then time as the loop runs steps, and inspect."""
  config, rs = setup(gpu_bench.spec(name, toy))
  cfg, b, t = rs.model_cfg, config.batch.global_batch, config.batch.seq_len
  shape = tuple(int(rs.mesh.shape[a]) for a in sharding.AXES)
  est = memory.estimate(config_schema.view(config.to_dict()), cfg, shape)
  need, (cap, cap_src) = memory_check.compiled_need(rs), memory_check.capacity(config)
  tol = float(device_memory.parse(contracts.load(device_memory.CONTRACT)).tolerance)
  mem = {"memory_xla_bytes": need, "memory_estimate_bytes": est.total,
         "memory_error": (est.total - need) / need, "memory_phase": est.phase,
         "memory_tolerance": tol, "capacity_bytes": cap, "capacity_source": cap_src,
         "compile_s": round(rs.compile_s, 2)}
  print("PARTIAL " + json.dumps(mem), flush=True)
  batch = fixed_batch(config)
  state, m = rs.compiled(rs.state.fresh_state(), rs.to_global(batch))
  first = float(m["loss"])
  state, times = rs.time_steps(state, itertools.repeat(batch), warmup, steps)
  state, m = rs.compiled(state, rs.to_global(batch))
  last, step_s, tokens = float(m["loss"]), statistics.median(times), b * t
  peak, peak_src = flops.device_peak(cfg.dtype)
  n_params, hbm = count_params(cfg).total, flops.device_peak_memory()
  return {**mem, "params": n_params, "batch": b, "seq_len": t, "dtype": cfg.dtype,
          "attention": attention.resolve(cfg), "scan_layers": cfg.layers_scanned(),
          "remat": cfg.remat, "loss_chunk": cfg.loss_chunk, "steps": steps,
          "step_ms": round(1e3 * step_s, 3), "tokens_per_s": round(tokens / step_s),
          "mfu": flops.flops_per_token(cfg, n_params, t) * tokens / step_s / peak,
          "hfu": executed_flops(rs, config, batch) / step_s / peak, "peak_source": peak_src,
          "peak_hbm_gib": None if hbm is None else round(hbm / 2**30, 3),
          "loss_first": round(first, 4), "loss_last": round(last, 4),
          "ln_vocab": round(math.log(cfg.vocab_size), 4),
          "loss_sane": bool(math.isfinite(first) and math.isfinite(last) and last < first
                            and abs(first - math.log(cfg.vocab_size)) < 1.0),
          **{f"hlo_{k}": v for k, v in flops.hlo_gemm_counts(rs.compiled.as_text()).items()}}


def probe() -> dict[str, Any]:
  """What the other items run on: backend, device, versions, the CUDA plugin wheels."""
  dev = jax.devices()[0]
  plugins = {d.metadata["Name"]: d.version for d in md.distributions()
             if d.metadata["Name"].replace("_", "-").startswith("jax-cuda")}
  return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "cuda_plugins": plugins,
          "bytes_limit": (dev.memory_stats() or {}).get("bytes_limit")}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("item", help="probe:device, check:<name> or row:<name>")
  ap.add_argument("--dry_run", action="store_true")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--warmup", type=int, default=2)
  args = ap.parse_args()
  # XLA flags, memory fraction (GPU hosts) and the cache, as a run gets them (before the backend)
  settings, cache = gpu_runtime.apply(), compile_cache.apply()
  kind, name = args.item.split(":", 1)
  if kind == "probe":
    out = {**probe(), "runtime": gpu_runtime.describe(settings),
           "compilation_cache": cache or "off", "status": "ok"}
  elif kind == "check":
    out = {"name": name, **CHECKS[name](args.dry_run)}
  else:
    out = {"name": name, "status": "ok", **run_row(name, args.dry_run, args.steps, args.warmup)}
  print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
