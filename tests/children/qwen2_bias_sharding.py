"""Child: trains a tiny Qwen2-shaped model 3 steps on 1 device and on a (1, 2, 2) mesh of 4
fake CPU devices; prints both loss series and the k-projection bias's partition spec."""
import json

import jax

jax.config.update("jax_num_cpu_devices", 4)
import numpy as np

from configs import base
from models.config import ModelConfig
from train.state import sharding
from train.state import step as step_lib
from train.state.setup import TrainSetup

c = base.get_config()
c.model.update(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
               max_seq_len=16, family="qwen2", qkv_bias=True)
c.schedule.update(warmup_steps=2)
cfg, tx = ModelConfig.from_dict(c.model.to_dict()), step_lib.make_optimizer(c)
toks = np.random.default_rng(0).integers(0, 64, (3, 8, 17)).astype(np.int32)
def run(shape, devices=None):
  mesh = sharding.make_mesh(shape, devices)
  setup = TrainSetup.build(cfg, tx, 0, mesh)
  step = setup.jit_step(step_lib.make_train_step(setup.graphdef, tx, step_lib.lr_schedule(c)))
  state, losses = setup.fresh_state(), []
  for t in toks:
    batch = jax.device_put({"inputs": t[:, :-1], "targets": t[:, 1:]},
                           sharding.batch_sharding(mesh))
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
  bias = state.params["blocks"][0]["attn"]["wk"]["bias"]
  return {"losses": losses, "spec": [str(a) for a in bias.sharding.spec]}
print(json.dumps({"one": run((1, 1, 1), jax.devices()[:1]), "tensor": run((1, 2, 2))}))
