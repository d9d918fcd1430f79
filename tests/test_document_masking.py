"""Packed documents stay apart: for a window [doc A | doc B], the logits at doc B's positions
equal those of doc B alone at the start of a window, and no token of doc A changes them, on
every attention path this host runs, unrolled and scanned, with and without remat (the FSDP
variant: tests/test_document_masking_fsdp.py). The segment arrays come from the data
(train/data/documents.py): a pure function of the window."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from models.config import ModelConfig
from models.transformer import Transformer
from train.data import documents
from train.data.documents import Packing

LA, LB = 23, 41  # doc A's tail and doc B: the window is 64 positions


def _cfg(**over) -> ModelConfig:
  c = base.get_config()
  c.model.update(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64,
                 max_seq_len=64)
  return ModelConfig.from_dict({**c.model.to_dict(), **over})


def _model(cfg: ModelConfig, stacked: bool = False) -> Transformer:
  with nnx.use_eager_sharding(False):
    return Transformer(cfg, rngs=nnx.Rngs(0), stacked=stacked)


def _window(doc_a: np.ndarray, doc_b: np.ndarray) -> dict[str, jnp.ndarray]:
  """The batch arrays of one window [doc A | doc B], as the pipeline makes them."""
  starts = np.zeros((1, LA + LB), bool)
  starts[0, [0, LA]] = True
  arrays = documents.segments(documents.starts_in(np.array([0, LA, LA + LB]), np.array([0]),
                                                  LA + LB), Packing(True, True))
  np.testing.assert_array_equal(arrays["segment_ids"], np.cumsum(starts, axis=1) - 1)
  return {"tokens": jnp.asarray(np.concatenate([doc_a, doc_b])[None], jnp.int32),
          **{k: jnp.asarray(v) for k, v in arrays.items()}}


PATHS = [("einsum", False, "none"), ("xla", False, "none"), ("einsum", True, "full"),
         ("xla", True, "minimal_with_context")]


@pytest.mark.parametrize("attention,scanned,remat", PATHS)
def test_doc_b_sees_nothing_of_doc_a(attention, scanned, remat):
  cfg = _cfg(attention=attention, remat=remat)
  model = _model(cfg, scanned)
  rng = np.random.default_rng(1)
  doc_a, doc_b = rng.integers(0, 97, LA), rng.integers(0, 97, LB)
  fwd = jax.jit(lambda m, w: m(w["tokens"], w["positions"], w["segment_ids"]))
  packed = np.asarray(fwd(model, _window(doc_a, doc_b)))[0, LA:]
  alone = np.asarray(jax.jit(lambda m, t: m(t))(model, jnp.asarray(doc_b[None], jnp.int32)))[0]
  np.testing.assert_allclose(packed, alone, atol=1e-5, rtol=0)
  for i in range(LA):  # any token of doc A, changed: doc B's logits do not move at all
    changed = doc_a.copy()
    changed[i] = (changed[i] + 1 + i) % 97
    other = np.asarray(fwd(model, _window(changed, doc_b)))[0, LA:]
    np.testing.assert_array_equal(other, packed)


def test_without_segments_doc_b_does_see_doc_a():
  """The falsifier: plain causal attention over the same window leaks doc A into doc B."""
  model = _model(_cfg(attention="einsum"))
  rng = np.random.default_rng(1)
  doc_a, doc_b = rng.integers(0, 97, LA), rng.integers(0, 97, LB)
  packed = np.asarray(model(jnp.asarray(np.concatenate([doc_a, doc_b])[None])))[0, LA:]
  alone = np.asarray(model(jnp.asarray(doc_b[None])))[0]
  assert np.abs(packed - alone).max() > 1e-3


def test_one_segment_is_the_plain_causal_pass():
  """A window inside one document: segment ids all 0 and positions 0..T-1 give the unmasked
  logits (a single-document corpus loses nothing by masking)."""
  model = _model(_cfg(attention="xla"))
  toks = jnp.asarray(np.random.default_rng(2).integers(0, 97, (2, 64)), jnp.int32)
  zeros = jnp.zeros((2, 64), jnp.int32)
  masked = model(toks, jnp.broadcast_to(jnp.arange(64), (2, 64)), zeros)
  np.testing.assert_allclose(np.asarray(masked), np.asarray(model(toks)), atol=1e-6, rtol=0)


def test_segments_from_offsets():
  """Document starts inside a window (not its first position) come from the stored offsets;
  segment ids count them, positions restart at each."""
  offsets = np.array([0, 5, 9, 10, 30])  # documents [0,5) [5,9) [9,10) [10,30), length 30
  starts = documents.starts_in(offsets, np.array([3, 9, 12]), 8)
  arrays = documents.segments(starts, Packing(True, True))
  np.testing.assert_array_equal(arrays["segment_ids"], [[0, 0, 1, 1, 1, 1, 2, 3],
                                                        [0, 1, 1, 1, 1, 1, 1, 1],
                                                        [0, 0, 0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(arrays["positions"], [[0, 1, 0, 1, 2, 3, 0, 0],
                                                      [0, 0, 1, 2, 3, 4, 5, 6],
                                                      [0, 1, 2, 3, 4, 5, 6, 7]])
  assert set(documents.segments(starts, Packing(True, False))) == {"segment_ids"}
  figures = documents.report(arrays["segment_ids"])
  assert figures["documents_per_window"] == pytest.approx((4 + 2 + 1) / 3)
  # Row 0 keeps 3+10+1+1 of 36 causal pairs, row 1 1+28, row 2 all 36.
  assert figures["masked_pair_share"] == pytest.approx(1 - (15 + 29 + 36) / 108)


def _never() -> int:
  raise AssertionError("an explicit setting must not count the documents (reads the offsets)")


def test_resolution_follows_the_data():
  assert documents.resolve(None, None, lambda: 1) == Packing(False, False)  # the char experiments
  assert documents.resolve(None, None, lambda: 7222) == Packing(True, True)
  assert documents.resolve(None, False, lambda: 7222) == Packing(True, False)
  assert documents.resolve(False, None, _never) == Packing(False, False)
  assert documents.resolve(True, None, _never) == Packing(True, True)
  assert Packing.from_json(Packing(True, False).to_json()) == Packing(True, False)
  assert Packing.from_json(None) == Packing()
  assert dataclasses.replace(Packing(True, True), positions=False).keys() == ("segment_ids",)


def test_the_cudnn_path_receives_the_segment_mask_as_a_bias():
  """Stack fact (docs/stack-facts.md): the pinned JAX hands `dot_product_attention`'s boolean
  `mask` to cuDNN's fused kernel as an additive bias, 0 where attention is allowed and a large
  negative number where it is not (-2.2e12 in bfloat16); so the cudnn path masks segments
  exactly as xla does. Runs on CPU: the conversion is plain jnp, before any kernel."""
  from jax._src.cudnn.fused_attention_stablehlo import combine_bias_and_mask
  seg = jnp.asarray([[0, 0, 1, 1]])
  from models.attention import same_segment
  bias = np.asarray(combine_bias_and_mask(None, same_segment(seg)[:, None], jnp.bfloat16),
                    np.float32)
  assert bias.shape == (1, 1, 4, 4)
  allowed = np.asarray(same_segment(seg))[:, None]
  assert (bias[allowed] == 0).all() and (bias[~allowed] < -1e9).all()  # exp() of it is 0
