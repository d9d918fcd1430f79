"""Child of tests/test_memory_model.py and scripts/memory_matrix.py (8 fake CPU devices, set by
the parent's XLA_FLAGS; JAX_PLATFORMS=cpu): the memory model against XLA's compiled figure.

Each row is a config (model size, remat policy, scanned or unrolled layers, grad_accum, an
FSDP axis on its own first data x fsdp x tensor devices, a distillation teacher) whose train
step RunSetup.build compiles as a run does (the teacher: its config's parameters as abstract
arrays, sharded as a restore lays them out; nothing runs, so nothing is initialised). XLA's
figure is `flops.compiled_stats(...)['memory_bytes']` (arguments + outputs - aliases +
temporaries of the per-device program); the estimate is gates.memory.estimate for platform cpu.
Prints one JSON line: per row, both figures, the relative error, the peak's phase and the
compile seconds."""
import json
import os
import sys
import time

import jax
import optax

from configs import base
from gates import config_schema, memory
from models.config import ModelConfig
from models.params import count_params
from train.run.setup import RunSetup
from train.state import sharding
from train.state import step as step_lib
from train.state.distill import Teacher
from train.state.flops import compiled_stats
from train.state.setup import TrainSetup

assert jax.device_count() == 8, jax.device_count()
SMALL = dict(vocab_size=4000, d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=688,
             max_seq_len=128, attention="einsum")  # N = 2.48M
LARGE = dict(SMALL, d_model=512, n_heads=8, n_kv_heads=4, d_ff=1376)  # N = 7.85M
SCAN = {"scan_layers": True}
# name: (model, its changes, mesh (data, fsdp, tensor), global batch, grad_accum, teacher)
ROWS = {
    "S": (SMALL, {}, (1, 1, 1), 16, 1, None),
    "S ga4": (SMALL, {}, (1, 1, 1), 16, 4, None),
    "S full unrolled": (SMALL, {"remat": "full"}, (1, 1, 1), 16, 1, None),
    "S full scan": (SMALL, {"remat": "full", **SCAN}, (1, 1, 1), 16, 1, None),
    "S dots_saveable scan": (SMALL, {"remat": "dots_saveable", **SCAN}, (1, 1, 1), 16, 1, None),
    "S minimal_with_context scan": (SMALL, {"remat": "minimal_with_context", **SCAN},
                                    (1, 1, 1), 16, 1, None),
    "S fsdp2": (SMALL, {}, (1, 2, 1), 16, 1, None),
    "S fsdp8": (SMALL, {}, (1, 8, 1), 16, 1, None),
    "S fsdp8 full scan": (SMALL, {"remat": "full", **SCAN}, (1, 8, 1), 16, 1, None),
    "S distill S": (SMALL, {}, (1, 1, 1), 16, 1, SMALL),
    "S distill L fsdp2 ga4": (SMALL, {}, (1, 2, 1), 16, 4, LARGE),
    "L batch 4": (LARGE, {}, (1, 1, 1), 4, 1, None),
    "L fsdp2 ga4 full scan chunk32": (LARGE, {"remat": "full", "loss_chunk": 32, **SCAN},
                                      (1, 2, 1), 16, 4, None),
}


def config_for(model: dict, changes: dict, mesh: tuple, batch: int, accum: int, teacher):
  c = base.get_config()
  c.model.update(**model, **changes)
  c.batch.update(global_batch=batch, seq_len=128, grad_accum=accum)
  c.mesh.update(data=mesh[0], fsdp=mesh[1], tensor=mesh[2])
  c.logging.weight_norms = False  # the plain step (the log step measured no larger)
  if teacher is not None:
    c.distill.teacher = "in-memory"
  return c


def teacher_on(model_cfg: ModelConfig, mesh) -> Teacher:
  """The teacher as train.run.teacher.load hands it to the step, with abstract parameters
  carrying the shardings a restore gives them (the stored layout's, on the run's mesh)."""
  params = TrainSetup.build(model_cfg, optax.identity(), 0, mesh).targets()[0]
  return Teacher(model_cfg, step_lib.stored_graphdef(model_cfg), params,
                 count_params(model_cfg).total, {})


def row(name: str) -> dict:
  model, changes, shape, batch, accum, teacher = ROWS[name]
  c = config_for(model, changes, shape, batch, accum, teacher)
  model_cfg = ModelConfig.from_dict(c.model.to_dict())
  teacher_cfg = None if teacher is None else ModelConfig.from_dict(teacher)
  mesh = sharding.make_mesh(shape, jax.devices()[:shape[0] * shape[1] * shape[2]])
  t = time.perf_counter()
  rs = RunSetup.build(c, model_cfg, None if teacher is None else teacher_on(teacher_cfg, mesh),
                      mesh)
  seconds = time.perf_counter() - t
  xla = compiled_stats(rs.compiled)["memory_bytes"]
  est = memory.estimate(config_schema.view(c.to_dict()), model_cfg, shape, teacher_cfg,
                        platform="cpu")
  return {"name": name, "mesh": list(shape), "global_batch": batch, "grad_accum": accum,
          "remat": model_cfg.remat, "scan": bool(model_cfg.scan_layers),
          "n_params": count_params(model_cfg).total,
          "teacher_params": 0 if teacher is None else count_params(teacher_cfg).total,
          "xla": int(xla), "estimate": est.total, "error": (est.total - xla) / xla,
          "phase": est.phase, "compile_s": round(seconds, 2),
          "terms": {n: b for n, b, _ in est.rows() if b}}


if __name__ == "__main__":
  names = sys.argv[1:] or list(ROWS)
  out = [row(n) for n in names]
  print(json.dumps({"devices": jax.device_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                    "rows": out}))
