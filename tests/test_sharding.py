"""Sharding never changes the math and FSDP really splits memory.

Mesh arithmetic is checked in-process; the multi-device checks (the step as the loop compiles it,
activation sharding constraints on) run in one child process with 8
fake CPU devices (XLA_FLAGS must be set before JAX initializes its backend).
"""
import json

import pytest
from ml_collections import ConfigDict

import helpers
from core.errors import ConfigError
from train.state import sharding

pytestmark = pytest.mark.e2e


MESHES = {"data8": (8, 1, 1), "fsdp8": (1, 8, 1), "d2f2t2": (2, 2, 2), "f4t2": (1, 4, 2)}

_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from configs import base
from models.config import ModelConfig
from train.state import sharding, step as step_lib
from train.state.setup import TrainSetup

MESHES = json.loads(sys.argv[1])
assert jax.device_count() == 8, jax.device_count()
c = base.get_config()
c.model.update(vocab_size=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
               max_seq_len=16)
c.optimizer.update(lr=1e-2)
c.schedule.update(warmup_steps=2)
cfg = ModelConfig.from_dict(c.model.to_dict())
tx = step_lib.make_optimizer(c)
rng = np.random.default_rng(0)
toks = rng.integers(0, 64, (5, 8, 17))
BATCHES = [{"inputs": t[:, :-1].astype(np.int32), "targets": t[:, 1:].astype(np.int32)}
           for t in toks]

def flat(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}

def spec(x):
  # Trailing Nones are equivalent (P('fsdp') == P('fsdp', None)); drop them.
  out = [list(a) if isinstance(a, tuple) else a for a in x.spec]
  while out and out[-1] is None:
    out.pop()
  return out

def dev0_bytes(tree):
  d0 = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree)
             for s in x.addressable_shards if s.device == d0)

def specs_of(tree):
  return {k: spec(v.sharding) for k, v in flat(tree).items()}

def run(shape, devices=None):
  mesh = sharding.make_mesh(shape, devices)
  setup = TrainSetup.build(cfg, tx, 0, mesh)
  bs = sharding.batch_sharding(mesh)
  step = setup.jit_step(step_lib.make_train_step(setup.graphdef, tx, step_lib.lr_schedule(c),
                                                 mesh=mesh))  # as train/run/setup.py
  state = setup.fresh_state()
  put = lambda b: jax.tree.map(lambda x: jax.device_put(x, bs), b)
  compiled = step.lower(state, put(BATCHES[0])).compile()  # as train/loop.py does
  want = {k: spec(v) for k, v in flat(setup.shardings).items()}
  got = {k: spec(v) for k, v in flat(compiled.output_shardings[0]).items()}
  out = {"init_param_specs": specs_of(state.params),
         "init_mu_specs": specs_of(state.opt_state[1][0].mu),
         "param_bytes_dev0": dev0_bytes(state.params),
         "state_sharding_drift": {k: [want[k], got[k]] for k in want if want[k] != got[k]},
         "losses": [], "grad_norms": [], "error": None}
  try:
    for b in BATCHES:
      state, m = compiled(state, put(b))
      out["losses"].append(float(m["loss"]))
      out["grad_norms"].append(float(m["grad_norm"]))
  except Exception as e:
    out["error"] = f"step {len(out['losses']) + 1}: {type(e).__name__}: {str(e)[:600]}"
  adam = state.opt_state[1][0]
  out.update(param_specs=specs_of(state.params), mu_specs=specs_of(adam.mu),
             nu_specs=specs_of(adam.nu), embed_sum=float(jnp.sum(state.params["embed"])))
  return out

results = {"single": run((1, 1, 1), jax.devices()[:1])}
for name, shape in MESHES.items():
  results[name] = run(tuple(shape))
print("RESULT " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def results():
  """All mesh runs in one 8-fake-device child (one JAX startup)."""
  env = {**helpers.child_env(), **helpers.fake_devices(8), "JAX_PLATFORMS": "cpu"}
  proc = helpers.start(["-c", _SCRIPT, json.dumps(MESHES)], env, 300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def _mesh_cfg(data, fsdp, tensor):
  return ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def test_mesh_shape_resolves_minus_one():
  """One -1 axis takes the remaining devices."""
  assert sharding.mesh_shape(_mesh_cfg(-1, 1, 1), 8) == (8, 1, 1)
  assert sharding.mesh_shape(_mesh_cfg(2, -1, 2), 8) == (2, 2, 2)
  assert sharding.mesh_shape(_mesh_cfg(1, 4, -1), 8) == (1, 4, 2)
  assert sharding.mesh_shape(_mesh_cfg(1, 1, 1), 1) == (1, 1, 1)


@pytest.mark.parametrize("data, fsdp, tensor, n", [
    (2, 2, 1, 8), (4, 4, 1, 8), (1, 1, 1, 2), (-1, -1, 1, 8), (3, -1, 1, 8), (0, 8, 1, 8),
    (-2, 1, 1, 8)])
def test_mesh_shape_rejects_bad_meshes(data, fsdp, tensor, n):
  """A mesh that does not exactly cover the devices is a ConfigError, not a crash later."""
  with pytest.raises(ConfigError, match="mesh"):
    sharding.mesh_shape(_mesh_cfg(data, fsdp, tensor), n)


def test_check_divisibility_accepts():
  """Batch must split over data x fsdp (per microbatch) and heads over tensor."""
  sharding.check_divisibility((2, 2, 2), global_batch=8, grad_accum=1, n_heads=4, n_kv_heads=2)
  sharding.check_divisibility((1, 4, 1), global_batch=16, grad_accum=4, n_heads=3, n_kv_heads=1)


@pytest.mark.parametrize("shape, batch, accum, heads, kv_heads, eval_batch, match", [
    ((2, 4, 1), 12, 1, 4, 2, 0, "data x fsdp"),
    ((1, 8, 1), 16, 4, 4, 2, 0, "grad_accum"),
    ((1, 1, 4), 8, 1, 6, 2, 0, "n_heads"),
    ((1, 1, 2), 8, 1, 4, 1, 0, "n_kv_heads"),
    ((4, 1, 1), 8, 1, 4, 1, 6, "eval.batch_size=6"),
])
def test_check_divisibility_refuses(shape, batch, accum, heads, kv_heads, eval_batch, match):
  with pytest.raises(ConfigError, match=match):
    sharding.check_divisibility(shape, global_batch=batch, grad_accum=accum, n_heads=heads,
                                n_kv_heads=kv_heads, eval_batch=eval_batch)


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_sharded_run_matches_single_device(results, mesh):
  """First 5 losses and grad norms equal the 1-device run within 1e-5 relative (fp32)."""
  ref, got = results["single"], results[mesh]
  assert ref["error"] is None and len(ref["losses"]) == 5, ref["error"]
  assert ref["losses"][4] < ref["losses"][0]  # the reference actually trained
  assert got["error"] is None, f"{mesh}: {got['error']}"
  assert len(got["losses"]) == 5
  for key in ("losses", "grad_norms"):
    for i, (a, b) in enumerate(zip(got[key], ref[key])):
      assert abs(a - b) <= 1e-5 * abs(b), f"{mesh} {key}[{i}]: {a} vs {b}"
  assert abs(got["embed_sum"] - ref["embed_sum"]) <= 1e-4 * max(1.0, abs(ref["embed_sum"]))


@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_step_keeps_state_shardings(results, mesh):
  """The compiled step must return the state with the shardings it takes (setup.shardings):
  otherwise step 2 is refused ('compiled for input shardings that disagree')."""
  drift = results[mesh]["state_sharding_drift"]
  assert not drift, f"{mesh}: {len(drift)} leaves change sharding, e.g. {sorted(drift.items())[:3]}"


# Which dimension of each parameter is the model ('embed') dimension.
_EMBED_DIM = {"['embed']": 1, "['wq']": 0, "['wk']": 0, "['wv']": 0, "['wo']": 1,
              "['w_gate']": 0, "['w_up']": 0, "['w_down']": 1}


def _embed_dim(path):
  for key, dim in _EMBED_DIM.items():
    if key in path:
      return dim
  return None


@pytest.mark.parametrize("which", ["init_param_specs", "param_specs"])
def test_fsdp_shards_matrices_along_embed(results, which):
  """Under fsdp=8 every matrix is split over 'fsdp' on its embed dim, at init and after steps;
  norm scales stay replicated."""
  specs = results["fsdp8"][which]
  matrices = [p for p in specs if _embed_dim(p) is not None]
  assert len(matrices) == 1 + 2 * 7
  for path in matrices:
    want = [None, None]
    want[_embed_dim(path)] = "fsdp"
    while want[-1] is None:
      want.pop()
    assert specs[path] == want, f"{which} {path}: {specs[path]}"
  for path in specs:
    if "norm" in path:
      assert specs[path] == [], f"{which} {path}: {specs[path]}"


@pytest.mark.parametrize("mesh", ["fsdp8", "d2f2t2", "f4t2"])
def test_adam_moments_sharded_like_params(results, mesh):
  """AdamW mu/nu carry exactly their parameter's sharding (ZeRO: no replicated moments)."""
  r = results[mesh]
  assert r["init_mu_specs"] == r["init_param_specs"]
  assert r["mu_specs"] == r["param_specs"]
  assert r["nu_specs"] == r["param_specs"]
  assert any(any(a is not None for a in s) for s in r["param_specs"].values())


def test_tensor_axis_used_for_heads_and_mlp(results):
  """With tensor=2, the attention-head and MLP dims are split over 'tensor'."""
  specs = results["f4t2"]["init_param_specs"]
  assert specs["['blocks'][0]['attn']['wq']['kernel']"] == ["fsdp", "tensor"]
  assert specs["['blocks'][0]['mlp']['w_down']['kernel']"] == ["tensor", "fsdp"]


def test_fsdp_shrinks_per_device_param_bytes(results):
  """FSDP over 8 devices keeps ~1/8 of the parameter bytes on device 0 (norms replicated)."""
  replicated = results["data8"]["param_bytes_dev0"]
  fsdp = results["fsdp8"]["param_bytes_dev0"]
  assert replicated == results["single"]["param_bytes_dev0"]
  ratio = fsdp / replicated
  assert 1 / 8 <= ratio < 0.14, ratio
