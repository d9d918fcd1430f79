"""The memory model's arithmetic by hand, nothing compiled (gates/memory.py): its parameter
list and sharding rule are the model's and the trainer's; a 1B Llama's state bytes; FSDP and
tensor divide what they shard; remat orders the activations; a 7B Llama fits nowhere on one
24 GiB device and fits 8 of them once sharded."""
import math

import jax
import pytest
from flax import nnx
from jax.sharding import AbstractMesh

from configs import base
from gates import config_schema, device_memory, memory
from gates.shapes import Shape
from models.config import ModelConfig
from models.params import abstract_model, count_params
from train.state import sharding
from train.state import step as step_lib

LLAMA_1B = dict(vocab_size=32000, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                d_ff=8192, max_seq_len=2048)
LLAMA_7B = dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                d_ff=11008, max_seq_len=4096, tie_embeddings=False, dtype="bfloat16")
GPU = "gpu"  # planning for accelerators from this CPU host: bf16 activations, cuDNN attention
SPIKE = 4 * 4 + 2 * 4 * 128  # 4 int32 counts, the spike history's 2 float32 rings of 128


def _config(model: dict, **sections) -> config_schema.Config:
  c = base.get_config()
  c.model.update(**model)
  for section, values in sections.items():
    c[section].update(**values)
  return config_schema.view(c.to_dict())


def _count(model: dict) -> int:
  """N by gates/shapes.py's closed form (tests/test_param_count.py holds it to count_params,
  which builds the abstract model: seconds at 7B)."""
  cfg = ModelConfig(**model)
  return Shape(**{name: getattr(cfg, name) for name in Shape.__dataclass_fields__}).n_params


def _model_leaves(cfg: ModelConfig) -> list:
  flat = nnx.to_flat_state(nnx.state(abstract_model(cfg), nnx.Param))
  return sorted((tuple(v.get_value().shape), tuple(v.get_metadata()["out_sharding"]))
                for _, v in flat)


@pytest.mark.parametrize("model", [
    dict(LLAMA_1B, n_layers=2),
    dict(vocab_size=96, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=160,
         max_seq_len=32, family="qwen2", qkv_bias=True, tie_embeddings=False)])
def test_parameter_list_is_the_models(model):
  cfg = ModelConfig(**model)
  assert sorted(memory.leaves(cfg)) == _model_leaves(cfg)
  assert sum(math.prod(s) for s, _ in memory.leaves(cfg)) == count_params(cfg).total


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2), (1, 4, 2), (1, 1, 8)])
def test_sharding_rule_is_the_trainers(shape):
  assert memory.RULES == {k: v for k, v in sharding.DEFAULT_RULES if v}
  cfg = ModelConfig(**dict(LLAMA_1B, n_layers=1, vocab_size=32001))  # a vocab 2 doesn't split
  mesh = AbstractMesh(shape, sharding.AXES)
  specs = sharding.param_specs(abstract_model(cfg), mesh)
  flat = nnx.to_flat_state(nnx.state(abstract_model(cfg), nnx.Param))
  for path, var in flat:
    spec = specs
    for key in path:
      spec = spec[key]
    full = var.get_value().shape
    want = math.prod(d // (mesh.shape[a] if a else 1) for d, a in
                     zip(full, tuple(spec) + (None,) * len(full)))
    names = tuple(var.get_metadata()["out_sharding"])
    assert memory.per_device(full, names, dict(zip(sharding.AXES, shape))) == want, path


def test_eval_split_is_the_steps():
  for eval_batch in (8, 12, 32):
    for micro in (2, 4, 16):
      for ways in (1, 2, 4):
        assert memory.eval_microbatches(eval_batch, micro, ways) == \
            step_lib.eval_microbatches(eval_batch, micro, ways)


def test_1b_llama_state_bytes_by_hand():
  """float32: params N x 4 B, gradients N x 4, AdamW mu + nu 2 N x 4 (plus int32 counts and
  the spike history: 1,040 B at window 128, `test_state_is_the_trainers`); fsdp=8 divides
  every matrix by 8 along `embed` and leaves the norms."""
  n = _count(LLAMA_1B)
  model = ModelConfig(**dict(LLAMA_1B, remat="full"))
  assert 1.0e9 < n < 1.2e9 and n == sum(math.prod(s) for s, _ in memory.leaves(model))
  # A 16-token step keeps no activations to speak of and, without the spike guard's copies
  # of the moments, the update (gradients and their clipped copy) is the peak.
  config = _config(dict(LLAMA_1B, remat="full"), batch=dict(global_batch=1, seq_len=16),
                   guard=dict(spike_window=0))
  one = memory.estimate(config, model, (1, 1, 1), platform=GPU)
  assert one.phase == "update"
  assert (one.params, one.grads, one.update) == (n * 4, n * 4, n * 4)
  assert one.optimizer == 2 * n * 4 + 4 * 4 + 2 * 4  # counts, one-slot rings (window 0)
  assert one.host_save == one.params + one.optimizer
  norms = (2 * 16 + 1) * 2048
  per_device = (n - norms) // 8 + norms
  config = _config(dict(LLAMA_1B, remat="full"), batch=dict(global_batch=8, seq_len=16))
  eight = memory.estimate(config, model, (1, 8, 1), platform=GPU)
  assert (eight.params, eight.optimizer) == (per_device * 4, 2 * per_device * 4 + SPIKE)
  assert eight.phase == "block backward"  # every gradient, sharded, and the head's whole
  assert eight.grads == per_device * 4 + 32000 * 2048 * 4


def test_state_is_the_trainers():
  """params + optimizer = the TrainState's bytes: step count, parameters, make_optimizer's
  state (the abstract state: nothing runs)."""
  config = base.get_config()
  model = ModelConfig.from_dict(config.model.to_dict())
  state = jax.eval_shape(step_lib.init_fn(model, step_lib.make_optimizer(config), 0)[1])
  nbytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
  est = memory.estimate(config_schema.view(config.to_dict()), model, (1, 1, 1))
  assert est.params + est.optimizer == nbytes == 3 * est.params + SPIKE


def test_fsdp_and_tensor_divide_what_they_shard():
  mesh = {"data": 2, "fsdp": 4, "tensor": 2}
  assert memory.per_device((32000, 2048), ("vocab", "embed"), mesh) == 32000 * 2048 // 8
  assert memory.per_device((2048, 8192), ("embed", "mlp"), mesh) == 2048 * 8192 // 8
  assert memory.per_device((2048,), ("norm",), mesh) == 2048  # never split
  assert memory.per_device((32001, 2048), ("vocab", "embed"), mesh) == 32001 * 2048 // 4
  cfg = ModelConfig(**LLAMA_1B)
  config = _config(LLAMA_1B, batch=dict(global_batch=16, seq_len=256))
  one = memory.estimate(config, cfg, (1, 1, 1))
  for shape in ((16, 1, 1), (2, 8, 1), (1, 8, 2)):
    est = memory.estimate(config, cfg, shape)
    split = shape[1] * shape[2]
    assert one.params / split <= est.params < one.params / split * 1.01, shape  # norms whole
  # the data axis replicates: per-device state as on one device, per-device batch / 16
  data = memory.estimate(config, cfg, (16, 1, 1))
  assert (data.params, data.optimizer) == (one.params, one.optimizer)
  assert data.batch * 16 == one.batch


@pytest.mark.parametrize("platform", ["gpu", "cpu"])
def test_remat_orders_the_activations(platform):
  """full < dots_saveable < none, in the tensors a block keeps, the activations at the peak and
  the step's total (scanned layers, which honour remat on every platform)."""
  est = {}
  for policy in ("none", "dots_saveable", "minimal_with_context", "full"):
    model = dict(LLAMA_1B, n_layers=4, remat=policy, scan_layers=True)
    est[policy] = memory.estimate(_config(model, batch=dict(global_batch=4, seq_len=512)),
                                  ModelConfig(**model), (1, 1, 1), platform=platform)
  w = memory._tokens(ModelConfig(**LLAMA_1B), {"tensor": 1}, 512, "einsum")
  kept = {p: memory.block_tensors(w, p) for p in est}
  assert kept["full"] < kept["dots_saveable"] < kept["minimal_with_context"] < kept["none"]
  assert est["full"].total < est["dots_saveable"].total < est["none"].total
  assert est["full"].activations < est["dots_saveable"].activations < est["none"].activations


def test_unrolled_remat_lowers_nothing_on_xla_cpu():
  """XLA:CPU schedules the recomputation of unrolled blocks early (docs/decisions.md): the
  estimate keeps every activation there, and honours the policy on accelerators."""
  totals = {}
  for platform in ("cpu", "gpu"):
    for policy in ("none", "full"):
      model = dict(LLAMA_1B, n_layers=4, remat=policy, scan_layers=False)
      totals[platform, policy] = memory.estimate(
          _config(model, batch=dict(global_batch=4, seq_len=512)), ModelConfig(**model),
          (1, 1, 1), platform=platform).total
  assert totals["cpu", "full"] == totals["cpu", "none"]
  assert totals["gpu", "full"] < totals["gpu", "none"]


def test_7b_llama_fits_no_single_24_gib_device():
  cfg = ModelConfig(**LLAMA_7B)
  config = _config(LLAMA_7B, batch=dict(global_batch=8, seq_len=4096))
  n = _count(LLAMA_7B)
  assert memory.fixes(config, cfg, 1, 24 * device_memory.GiB, platform=GPU) == []
  why = memory.no_fix_text(config, cfg, 1, 24 * device_memory.GiB, platform=GPU)
  floor = 5 * n * 4  # params, mu, nu, gradients, clipped gradients: float32
  assert f"alone take {(floor + SPIKE) / device_memory.GiB:.2f} GiB" in why, why
  assert "fsdp=1" in why


def test_7b_llama_fits_eight_24_gib_devices_once_sharded():
  cfg = ModelConfig(**LLAMA_7B)
  config = _config(LLAMA_7B, batch=dict(global_batch=8, seq_len=4096))
  capacity = 24 * device_memory.GiB
  assert memory.estimate(config, cfg, (8, 1, 1), platform=GPU).total > capacity  # replicated
  found = memory.fixes(config, cfg, 8, capacity, platform=GPU)
  assert found, memory.no_fix_text(config, cfg, 8, capacity, platform=GPU)
  overrides, est = found[0]
  assert est.total <= capacity and est.mesh == (1, 8, 1)
  assert overrides["mesh.fsdp"] == 8 and overrides["mesh.data"] == 1
  assert memory.format_overrides(overrides).startswith("--config.")
  fixed = memory.estimate(*memory._with(config, cfg, overrides), (1, 8, 1), platform=GPU)
  assert fixed.total == est.total


def test_format_overrides_and_mesh():
  assert memory.format_overrides({"model.remat": "full", "batch.grad_accum": 4}) == \
      "--config.model.remat=full --config.batch.grad_accum=4"
  config = _config(LLAMA_1B, mesh=dict(data=-1, fsdp=2, tensor=2))
  assert memory.resolve_mesh(config, 16) == (4, 2, 2)
  with pytest.raises(Exception, match="does not fill"):
    memory.resolve_mesh(config, 6)
