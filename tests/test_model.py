"""The transformer's math: causal, rotary-relative, GQA-correct, float32 logits, and a KV cache
whose incremental decode reproduces the full forward pass (what sampling relies on)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.config import ModelConfig, ModelConfigError
from models.params import abstract_model
from models.transformer import Transformer, apply_rope, attend, rope_table

BASE = dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
            max_seq_len=32)
B, T = 2, 12


def _cfg(**over) -> ModelConfig:
  return ModelConfig(**{**BASE, **over})


def _random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
  """The real module graph with numpy-random weights: no init compiles (CPU time matters)."""
  graphdef, state = nnx.split(abstract_model(cfg))
  rng = np.random.default_rng(seed)
  pd = jax.tree.map(
      lambda s: jnp.asarray((1.0 if len(s.shape) == 1 else 0.0)
                            + rng.normal(0.0, 0.1, s.shape), s.dtype),
      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pd)
  return nnx.merge(graphdef, state)


@jax.jit
def _forward(m, tokens):
  return m(tokens)


@jax.jit
def _decode(m, tokens, caches, idx):
  return m.decode(tokens, caches=caches, cache_index=idx)


@jax.jit
def _rotate(x, positions):
  cos, sin = rope_table(32, x.shape[-1], 10000.0)
  return apply_rope(x, jnp.take(cos, positions, axis=0), jnp.take(sin, positions, axis=0))


def _tokens(seed=0, b=B, t=T, vocab=BASE["vocab_size"]):
  return np.random.default_rng(seed).integers(0, vocab, (b, t)).astype(np.int32)


@pytest.fixture(scope="module")
def model():
  return _random_model(_cfg(), seed=1)


def test_causality(model):
  """Changing token t+1 must leave logits at positions <= t unchanged (and change t+1)."""
  tokens = _tokens()
  base = _forward(model, tokens)
  for t in (0, 3, 7, T - 2):
    changed = tokens.copy()
    changed[:, t + 1] = (tokens[:, t + 1] + 17) % BASE["vocab_size"]
    out = _forward(model, changed)
    np.testing.assert_allclose(out[:, :t + 1], base[:, :t + 1], rtol=0, atol=1e-6)
    assert np.abs(np.asarray(out[:, t + 1] - base[:, t + 1])).max() > 1e-4


def _score(q, k, m, n):
  """Dot product of q rotated to position m and k rotated to position n."""
  qm = _rotate(q[None, None, None, :], jnp.array([[m]]))[0, 0, 0]
  kn = _rotate(k[None, None, None, :], jnp.array([[n]]))[0, 0, 0]
  return float(np.dot(np.asarray(qm, np.float64), np.asarray(kn, np.float64)))


def test_rope_depends_only_on_relative_position():
  """RoPE's defining property: q.k depends on m - n only."""
  q, k = np.random.default_rng(0).normal(size=(2, 16)).astype(np.float32)
  assert abs(_score(q, k, 3, 1) - _score(q, k, 10, 8)) < 1e-5
  assert abs(_score(q, k, 5, 5) - _score(q, k, 0, 0)) < 1e-5
  assert abs(_score(q, k, 1, 7) - _score(q, k, 20, 26)) < 1e-5
  assert abs(_score(q, k, 3, 1) - _score(q, k, 3, 2)) > 1e-3
  assert abs(_score(q, k, 3, 1) - _score(q, k, 1, 3)) > 1e-3


def test_rope_position_zero_is_identity_and_preserves_norm():
  """Angle 0 rotates nothing; other positions rotate but keep each vector's length."""
  x = np.random.default_rng(1).normal(size=(2, 5, 3, 8)).astype(np.float32)
  np.testing.assert_array_equal(_rotate(x, jnp.zeros((2, 5), jnp.int32)), x)
  y = np.asarray(_rotate(x, jnp.broadcast_to(jnp.arange(5), (2, 5))))
  np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1),
                             rtol=1e-5)
  assert not np.allclose(y[:, 1:], x[:, 1:], atol=1e-3)


def _reference_attention(q, k, v, mask):
  """Per-head numpy attention; query head h reads kv head h // (H/KV), as in HF repeat_kv."""
  q, k, v, mask = map(np.asarray, (q, k, v, mask))
  b, t, h, d = q.shape
  groups = h // k.shape[2]
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      s = q[bi, :, hi] @ k[bi, :, hi // groups].T / np.sqrt(d)
      s = np.where(mask[min(bi, mask.shape[0] - 1)], s, -np.inf)
      p = np.exp(s - s.max(-1, keepdims=True))
      out[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, hi // groups]
  return out


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_attend_grouped_equals_expanded_and_reference(kv):
  """Shared KV heads equal explicitly repeated heads and a per-head reference."""
  h, d, t = 4, 8, 6
  rng = np.random.default_rng(kv)
  q = rng.normal(size=(B, t, h, d)).astype(np.float32)
  k = rng.normal(size=(B, t, kv, d)).astype(np.float32)
  v = rng.normal(size=(B, t, kv, d)).astype(np.float32)
  mask = np.tril(np.ones((t, t), bool))[None]
  attend_jit = jax.jit(attend)
  grouped = attend_jit(q, k, v, mask)
  expanded = attend_jit(q, np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2), mask)
  np.testing.assert_allclose(grouped, expanded, atol=1e-6)
  np.testing.assert_allclose(grouped, _reference_attention(q, k, v, mask), atol=1e-5)


@pytest.mark.parametrize("kv", [1, 4])
def test_gqa_models_run(kv):
  """MQA (1 KV head) and MHA (KV = heads) build, have the right KV shapes, and run."""
  m = _random_model(_cfg(n_kv_heads=kv))
  assert m.blocks[0].attn.wk.kernel[...].shape == (32, kv * 8)
  logits = _forward(m, _tokens())
  assert logits.shape == (B, T, BASE["vocab_size"])
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_logits_float32_with_bf16_compute():
  """Loss/softmax need float32 logits even when activations are bfloat16."""
  m = _random_model(_cfg(dtype="bfloat16", param_dtype="bfloat16"))
  assert m.embed[...].dtype == jnp.bfloat16
  logits = _forward(m, _tokens())
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  caches = m.init_cache(B, T)
  assert caches[0][0].dtype == jnp.bfloat16
  assert _decode(m, _tokens(), caches, 0)[0].dtype == jnp.float32


def test_tied_head_equals_untied_head_set_to_embedding_transpose():
  """Tied logits use embed.T as the head; untied has its own lm_head that drives the logits."""
  tied = _random_model(_cfg(), seed=3)
  untied = _random_model(_cfg(tie_embeddings=False), seed=4)
  assert not hasattr(tied, "lm_head")
  assert untied.lm_head.kernel[...].shape == (32, BASE["vocab_size"])
  tokens = _tokens()
  before = _forward(untied, tokens)
  state = nnx.state(untied)
  pd = nnx.to_pure_dict(state)
  tied_pd = nnx.to_pure_dict(nnx.state(tied))
  pd.update({k: v for k, v in tied_pd.items()})
  pd["lm_head"]["kernel"] = tied_pd["embed"].T
  nnx.replace_by_pure_dict(state, pd)
  nnx.update(untied, state)
  after = _forward(untied, tokens)
  np.testing.assert_allclose(after, _forward(tied, tokens), atol=1e-6)
  assert not np.allclose(before, after, atol=1e-4)
  untied.lm_head.kernel[...] = jnp.zeros_like(untied.lm_head.kernel[...])
  np.testing.assert_array_equal(_forward(untied, tokens), 0.0)


@pytest.mark.parametrize("prefix", [1, 5])
def test_kv_cache_decode_matches_full_forward(model, prefix):
  """Prefill + one-token-at-a-time decoding equals the full causal pass at every position."""
  tokens = _tokens(seed=prefix)
  full = _forward(model, tokens)
  logits, caches = _decode(model, tokens[:, :prefix], model.init_cache(B, T), 0)
  np.testing.assert_allclose(logits, full[:, :prefix], atol=1e-5)
  for i in range(prefix, T):
    step_logits, caches = _decode(model, tokens[:, i:i + 1], caches, jnp.int32(i))
    np.testing.assert_allclose(step_logits[:, 0], full[:, i], atol=1e-5, err_msg=f"pos {i}")


@pytest.mark.parametrize("over, field", [
    (dict(d_model=30, n_heads=4), "model.d_model"),
    (dict(n_heads=4, n_kv_heads=3), "model.n_kv_heads"),
    (dict(vocab_size=0), "model.vocab_size"),
    (dict(n_layers=-1), "model.n_layers"),
    (dict(d_ff=True), "model.d_ff"),
    (dict(max_seq_len=16.0), "model.max_seq_len"),
    (dict(dtype="float64"), "model.dtype"),
    (dict(param_dtype="int8"), "model.param_dtype"),
    (dict(rope_theta=0.0), "model.rope_theta"),
    (dict(d_model=12, n_heads=4, n_kv_heads=4), "head_dim"),
])
def test_config_rejects_bad_fields(over, field):
  """Each invalid config fails at construction with an error naming the offending field."""
  with pytest.raises(ModelConfigError, match=field.replace(".", r"\.")):
    _cfg(**over)


def test_config_dict_round_trip_and_unknown_field():
  """Checkpoints store to_dict(); from_dict must rebuild it exactly and refuse unknown keys."""
  cfg = _cfg(tie_embeddings=False, dtype="bfloat16", rope_theta=500000.0, norm_eps=1e-6)
  d = cfg.to_dict()
  assert d["n_kv_heads"] == 2 and d["tie_embeddings"] is False
  assert ModelConfig.from_dict(d) == cfg
  with pytest.raises(ModelConfigError, match="n_expertz"):
    ModelConfig.from_dict({**d, "n_expertz": 8})
  with pytest.raises(TypeError):
    ModelConfig.from_dict({k: v for k, v in d.items() if k != "d_model"})
