"""Qwen2 in the model: q/k/v biases as a ModelConfig option tied to the `family` identity,
counted, sharded, matched and scored like every other architecture field."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import helpers
import hf_helpers as hh
from gates import arch_match
from helpers import build_model
from models.config import ModelConfigError
from models.params import count_params, param_shapes

pytestmark = pytest.mark.hf


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
  from train.ckpt import quality as inspect
  from train.ckpt.metadata import Metadata, architecture
  cfg = hh.model_config("qwen2", False)
  meta = {"schema": "pregate.checkpoint/v1", "model": cfg.to_dict(),
          "architecture": architecture("qwen2")}
  stored = param_shapes(build_model(cfg))
  ident = inspect.quality(Metadata.from_json(meta), stored)["subscores"]["identity"]
  assert ident["score"] == 10, ident
  meta["architecture"] = architecture("llama")  # a Qwen2 model claiming to be a Llama
  lost = inspect.quality(Metadata.from_json(meta), stored)["subscores"]["identity"]["lost"]
  assert [x["points"] for x in lost] == [2, 2, 2], lost
  assert "architecture.hf_class is 'LlamaForCausalLM', expected 'Qwen2ForCausalLM'" in \
      " | ".join(x["reason"] for x in lost)
  meta["architecture"] = architecture("qwen2")
  del meta["model"]["family"], meta["model"]["qkv_bias"]
  lost = inspect.quality(Metadata.from_json(meta), stored)["subscores"]["identity"]["lost"]
  assert any("model.family and model.qkv_bias not recorded" in x["reason"] for x in lost), lost


def test_biases_shard_over_tensor_and_train_like_one_device():
  got = helpers.python_json("qwen2_bias_sharding.py", env={})
  assert got["tensor"]["spec"] == ["tensor"] and got["one"]["spec"] in ([], ["None"])
  np.testing.assert_allclose(got["tensor"]["losses"], got["one"]["losses"], rtol=1e-5)
