"""Measure the functional fingerprint (issue 16): cross-mesh noise, edit effect sizes, cost.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 PYTHONPATH=. \
    python scripts/integrity_measure.py CHECKPOINT_DIR [STEP] [cost]

Prints one JSON line per measurement: the max scaled probe difference
(gates.arch_match.fingerprint_difference) of each mesh against 1 device, per compute dtype;
of each edited non-shape field against the unedited metadata; and the fingerprint's cost.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time

import jax
import optax

from gates import arch_match
from models.config import ModelConfig
from train.ckpt import fingerprint, heldout
from train.ckpt.checkpointer import Checkpointer
from train.state import sharding
from train.state.setup import TrainSetup

MESHES = [(2, 1, 1), (1, 2, 1), (4, 1, 1), (1, 4, 1), (1, 1, 2), (2, 2, 2), (1, 8, 1), (8, 1, 1)]


def _params(ckpt: Checkpointer, step: int, cfg: ModelConfig, shape: tuple[int, int, int]):
  n = shape[0] * shape[1] * shape[2]
  setup = TrainSetup.build(cfg, optax.identity(), 0, sharding.make_mesh(shape, jax.devices()[:n]))
  return ckpt.restore(step, params_target=setup.targets()[0])["params"]


def main(path: str, step: int | None, cost_only: bool) -> None:
  ckpt = Checkpointer(path, read_only=True)
  step = ckpt.resolve("latest" if step is None else step)
  meta = ckpt.read_meta(step)
  base = ModelConfig.from_dict(dict(meta.model))
  one = _params(ckpt, step, base, (1, 1, 1))
  if not cost_only:
    _noise_and_edits(ckpt, step, base, one)
  for shape in ((1, 1, 1), (2, 1, 1)):
    params = _params(ckpt, step, base, shape)
    fingerprint._summaries_fn.cache_clear()  # pylint: disable=protected-access
    t0, c0 = time.perf_counter(), time.process_time()
    fingerprint.compute(params, base)
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    for _ in range(10):
      fingerprint.compute(params, base)
    print(json.dumps({"cost": shape, "first_s": first, "first_cpu_s": first_cpu,
                      "again_s": (time.perf_counter() - t0) / 10}), flush=True)
  ckpt.close()


def _noise_and_edits(ckpt: Checkpointer, step: int, base: ModelConfig, one) -> None:
  for dtype in ("float32", "bfloat16"):
    cfg = dataclasses.replace(base, dtype=dtype)
    ref = fingerprint.compute(one, cfg)
    for shape in MESHES:
      if shape[2] > 1 and cfg.n_kv_heads % shape[2]:
        continue
      got = fingerprint.compute(_params(ckpt, step, cfg, shape), cfg)
      print(json.dumps({"noise": dtype, "mesh": shape,
                        "diff": arch_match.fingerprint_difference(ref, got)}), flush=True)
  ref = fingerprint.compute(one, base)
  edits = {"rope_theta": [base.rope_theta * 10, base.rope_theta / 10, 500000.0],
           "norm_eps": [base.norm_eps * 10, base.norm_eps / 10, 1e-6],
           "dtype": ["bfloat16", "float16"]}
  for field, values in edits.items():
    for value in values:
      got = fingerprint.compute(one, dataclasses.replace(base, **{field: value}))
      print(json.dumps({"edit": field, "value": value,
                        "diff": arch_match.fingerprint_difference(ref, got)}), flush=True)
  for h, kv in heldout.head_splits(base):
    got = fingerprint.compute(one, dataclasses.replace(base, n_heads=h, n_kv_heads=kv))
    print(json.dumps({"edit": "head split", "value": [h, kv],
                      "diff": arch_match.fingerprint_difference(ref, got)}), flush=True)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None, "cost" in sys.argv[3:])
