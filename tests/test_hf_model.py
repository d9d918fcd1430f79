"""Qwen2 in the model: q/k/v biases as a ModelConfig option tied to the `family` identity,
counted, sharded, matched and scored like every other architecture field."""
from __future__ import annotations

import helpers
import hf_helpers as hh
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gates import arch_match
from models.config import ModelConfigError
from models.params import build_model, count_params, param_shapes


def test_family_and_biases_must_agree():
  for family, bias in (("llama", True), ("qwen2", False)):
    with pytest.raises(ModelConfigError, match="q/k/v biases are the Qwen2 layout"):
      hh.model_config(family, True, qkv_bias=bias)
  with pytest.raises(ModelConfigError, match="model.family='gpt2' is not one of"):
    hh.model_config("gpt2", True)
  cfg = hh.model_config("qwen2", False)
  assert (cfg.hf_architecture, cfg.hf_model_type) == ("Qwen2ForCausalLM", "qwen2")


def test_biases_are_counted_and_named():
  llama, qwen = hh.model_config("llama", True), hh.model_config("qwen2", True)
  hd = llama.head_dim
  per_layer = llama.n_heads * hd + 2 * llama.n_kv_heads * hd
  assert count_params(qwen).total - count_params(llama).total == llama.n_layers * per_layer
  assert count_params(qwen).embedding == count_params(llama).embedding
  shapes = param_shapes(build_model(qwen))
  assert shapes["blocks/1/attn/wq/bias"] == ((32,), "float32")
  assert shapes["blocks/1/attn/wk/bias"] == shapes["blocks/1/attn/wv/bias"] == ((16,), "float32")
  assert not any(p.endswith("bias") and "/attn/w" not in p for p in shapes)
  abstract = nnx.state(build_model(qwen), nnx.Param)
  names = {"/".join(map(str, p)): v.get_metadata().get("out_sharding")
           for p, v in nnx.to_flat_state(abstract)}
  assert names["blocks/0/attn/wq/bias"] == ("heads",)
  assert names["blocks/0/attn/wk/bias"] == ("kv_heads",)


def test_biases_change_the_output():
  model = build_model(hh.model_config("qwen2", True), seed=3)
  tokens = jnp.arange(10, dtype=jnp.int32)[None]
  before = np.asarray(model(tokens))
  model.blocks[0].attn.wv.bias[...] = jnp.full((16,), 0.5)
  assert np.abs(np.asarray(model(tokens)) - before).max() > 1e-3


def test_architecture_match_covers_the_identity():
  llama, qwen = hh.model_config("llama", True).to_dict(), hh.model_config("qwen2", True).to_dict()
  diffs = arch_match.config_differences(qwen, llama)
  assert "model.family: expected 'qwen2' found 'llama'" in diffs
  assert "model.qkv_bias: expected True found False" in diffs
  old = {k: v for k, v in llama.items() if k not in ("family", "qkv_bias")}
  assert arch_match.config_differences(llama, old) == []


def test_inspect_scores_the_hf_identity():
  from train import inspect
  from train.run_state import architecture
  cfg = hh.model_config("qwen2", False)
  meta = {"schema": "pregate.checkpoint/v1", "model": cfg.to_dict(),
          "architecture": architecture("qwen2")}
  stored = param_shapes(build_model(cfg))
  ident = inspect.quality(meta, stored)["subscores"]["identity"]
  assert ident["score"] == 10, ident
  meta["architecture"] = architecture("llama")  # a Qwen2 model claiming to be a Llama
  lost = inspect.quality(meta, stored)["subscores"]["identity"]["lost"]
  assert [x["points"] for x in lost] == [2, 2, 2], lost
  assert "architecture.hf_class is 'LlamaForCausalLM', expected 'Qwen2ForCausalLM'" in \
      " | ".join(x["reason"] for x in lost)
  meta["architecture"] = architecture("qwen2")
  del meta["model"]["family"], meta["model"]["qkv_bias"]
  lost = inspect.quality(meta, stored)["subscores"]["identity"]["lost"]
  assert any("model.family and model.qkv_bias not recorded" in x["reason"] for x in lost), lost


_SHARDED = """
import json, jax
jax.config.update("jax_num_cpu_devices", 4)
import numpy as np
from configs import base
from models.config import ModelConfig
from train import sharding, step as step_lib
from train.run_state import TrainSetup
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
"""


def test_biases_shard_over_tensor_and_train_like_one_device():
  got = helpers.python_json(_SHARDED, env={})
  assert got["tensor"]["spec"] == ["tensor"] and got["one"]["spec"] in ([], ["None"])
  np.testing.assert_allclose(got["tensor"]["losses"], got["one"]["losses"], rtol=1e-5)
