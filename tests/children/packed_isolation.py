"""Child of tests/test_document_masking_fsdp.py (8 fake CPU devices, set by the parent's
XLA_FLAGS): the isolation proof on sharded meshes. For each mesh named in argv (`DxFxT`, a
`-scan` suffix stacks and scans the layers) the model's parameters are laid out as training
lays them out, the forward runs with the step's activation constraints, and row 0 of the batch
is the window [doc A | doc B]. Prints one JSON line: per mesh, the largest difference between
doc B's logits there and doc B alone (one device, unsharded), and whether changing each token
of doc A left them bitwise unchanged."""
import dataclasses
import json
import sys

import jax
import numpy as np
from flax import nnx

from configs import shakespeare_char
from models.config import ModelConfig
from models.sharding_hook import activation_constraints
from models.transformer import Transformer
from train.data import documents
from train.data.documents import Packing
from train.state import sharding
from train.state import step as step_lib
from train.state.activation_sharding import mesh_constraint
from train.state.setup import TrainSetup

assert jax.device_count() == 8, jax.device_count()
LA, LB, T, ROWS = 37, 91, 128, 8
config = shakespeare_char.get_config()
config.model.update(n_layers=2, attention="einsum")
cfg = ModelConfig.from_dict(config.model.to_dict())
tx = step_lib.make_optimizer(config)
rng = np.random.default_rng(0)
doc_a, doc_b = rng.integers(0, 65, LA), rng.integers(0, 65, LB)
rest = rng.integers(0, 65, (ROWS, T))


def window(a: np.ndarray) -> dict[str, np.ndarray]:
  """The batch: row 0 [doc A | doc B] and its segments; the other rows one document each."""
  tokens = rest.copy()
  tokens[0] = np.concatenate([a, doc_b])
  starts = documents.starts_in(np.array([0, LA, T]), np.zeros(ROWS, np.int64), T)
  starts[1:] = False
  starts[:, 0] = True
  return {"tokens": tokens.astype(np.int32),
          **documents.segments(starts, Packing(True, True))}


with nnx.use_eager_sharding(False):
  reference = Transformer(cfg, rngs=nnx.Rngs(0))
single = jax.device_put(nnx.to_pure_dict(nnx.state(reference)), jax.devices()[0])
graph = nnx.graphdef(reference)
alone = np.asarray(jax.jit(lambda p, t: nnx.merge(graph, p)(t))(single, doc_b[None]))[0]


def run(shape: tuple[int, int, int], scan: bool) -> dict:
  mesh = sharding.make_mesh(shape)
  setup = TrainSetup.build(dataclasses.replace(cfg, scan_layers=scan), tx, 0, mesh)
  params = setup.fresh_state().params
  constraint = mesh_constraint(mesh)

  def forward(p, w):
    with activation_constraints(constraint):
      return nnx.merge(setup.graphdef, p)(w["tokens"], w["positions"], w["segment_ids"])

  fwd = jax.jit(forward, in_shardings=(setup.shardings.params, sharding.batch_sharding(mesh)))
  base = np.asarray(fwd(params, window(doc_a)))[0, LA:]
  unchanged = True
  for i in range(0, LA, 4):
    a = doc_a.copy()
    a[i] = (a[i] + 7) % 65
    unchanged &= bool(np.array_equal(np.asarray(fwd(params, window(a)))[0, LA:], base))
  return {"max_diff": float(np.abs(base - alone).max()), "unchanged": unchanged,
          "devices": mesh.size}


out = {}
for name in sys.argv[1:]:
  shape = tuple(int(x) for x in name.removesuffix("-scan").split("x"))
  out[name] = run(shape, name.endswith("-scan"))
print(json.dumps(out))
