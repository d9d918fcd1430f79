"""Child of tests/test_activation_sharding.py (8 fake CPU devices, set by the parent's XLA_FLAGS):
the default model's train and microbatched eval steps (2 of its 3 layers) on the meshes named
in argv (the first also without the activation sharding constraints; a `-scan` suffix trains
with the layers stacked and scanned). Prints one JSON line: per run, the collective counts of
the compiled train and eval steps and the losses."""
import dataclasses
import json
import sys

import jax
import numpy as np

from configs import shakespeare_char
from models.config import ModelConfig
from train.cli.bench import collective_counts
from train.state import sharding
from train.state import step as step_lib
from train.state.setup import TrainSetup

assert jax.device_count() == 8, jax.device_count()
config = shakespeare_char.get_config()
config.model.update(n_layers=2)  # the default's widths and context, one layer fewer
cfg = ModelConfig.from_dict(config.model.to_dict())
tx = step_lib.make_optimizer(config)
toks = np.random.default_rng(0).integers(0, 65, (4, 32, 129))
batches = [{"inputs": t[:, :-1].astype(np.int32), "targets": t[:, 1:].astype(np.int32)}
           for t in toks]


def run(shape, constrained, devices=None, scan=False):
  mesh = sharding.make_mesh(shape, devices)
  setup = TrainSetup.build(dataclasses.replace(cfg, scan_layers=scan), tx, 0, mesh)
  put = lambda b: jax.tree.map(lambda x: jax.device_put(x, sharding.batch_sharding(mesh)), b)
  hook_mesh = mesh if constrained else None
  step = setup.jit_step(step_lib.make_train_step(setup.graphdef, tx,
                                                 step_lib.lr_schedule(config), mesh=hook_mesh))
  compiled = step.lower(setup.fresh_state(), put(batches[0])).compile()
  eval_fn = jax.jit(step_lib.make_eval_step(setup.graphdef, 4, mesh=hook_mesh),
                    in_shardings=(setup.shardings.params, sharding.batch_sharding(mesh)))
  eval_compiled = eval_fn.lower(setup.fresh_state().params, put(batches[-1])).compile()
  state, losses = setup.fresh_state(), []
  for b in batches[:-1]:
    state, m = compiled(state, put(b))
    losses.append(float(m["loss"]))
  return {"train": collective_counts(compiled.as_text()),
          "eval": collective_counts(eval_compiled.as_text()),
          "losses": losses, "eval_loss": float(eval_compiled(state.params, put(batches[-1])))}


out = {"single": run((1, 1, 1), False, jax.devices()[:1])}
for i, name in enumerate(sys.argv[1:]):
  shape = tuple(int(x) for x in name.removesuffix("-scan").split("x"))
  out[name] = run(shape, True, scan=name.endswith("-scan"))
  if i == 0:  # the first mesh also without constraints: what they remove
    out[name + "-unconstrained"] = run(shape, False)
print(json.dumps(out))
