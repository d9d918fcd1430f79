"""`count_params` is exact and free: the Chinchilla gate trusts it before anything compiles.

The abstract count must equal the real parameter tree of a built model, split embedding from
non-embedding parameters the Kaplan way, match the closed-form Llama formula, and cost zero XLA
compiles and zero live arrays (docs/stack-facts.md).
"""
import math

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import nanogpt_shakespeare_char_cpu
from helpers import build_model
from models.config import ModelConfig
from models.params import abstract_model, count_params, param_shapes

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def total_size(tree) -> int:
  """Number of scalars in a pytree of arrays."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))

CONFIGS = {
    "tied": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
                        d_ff=48, max_seq_len=16),
    "untied": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4,
                          d_ff=48, max_seq_len=16, tie_embeddings=False),
    "gqa": ModelConfig(vocab_size=50, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2,
                       d_ff=80, max_seq_len=16),
    "mqa_untied": ModelConfig(vocab_size=70, d_model=32, n_layers=1, n_heads=4, n_kv_heads=1,
                              d_ff=40, max_seq_len=16, tie_embeddings=False),
    "bf16_params": ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                               d_ff=56, max_seq_len=16, dtype="bfloat16",
                               param_dtype="bfloat16"),
}


def _llama_formula(cfg: ModelConfig) -> int:
  """Closed-form Llama parameter count, written independently of the model code."""
  d, hd, ff = cfg.d_model, cfg.head_dim, cfg.d_ff
  per_layer = (d * (cfg.n_heads * hd) + 2 * d * (cfg.n_kv_heads * hd)
               + (cfg.n_heads * hd) * d + 3 * d * ff + 2 * d)
  embeddings = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
  return cfg.n_layers * per_layer + embeddings + d


class _CompileCounter:
  """Counts real XLA backend compiles (not lowerings) via jax.monitoring."""

  def __init__(self):
    self.n = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration_secs, **kwargs):
    del duration_secs, kwargs
    if event == COMPILE_EVENT:
      self.n += 1


_COUNTER = _CompileCounter()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_count_equals_real_tree(name):
  """The abstract count must equal the parameters a real model actually allocates."""
  cfg = CONFIGS[name]
  real = build_model(cfg)
  real_total = total_size(nnx.state(real, nnx.Param))
  abstract_total = total_size(nnx.state(abstract_model(cfg), nnx.Param))
  counts = count_params(cfg)
  assert counts.total == real_total == abstract_total
  assert counts.total == _llama_formula(cfg)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_and_abstract_shapes_and_dtypes_agree(name):
  """Same paths, shapes and dtypes: a bf16 param_dtype must not be counted as fp32 elsewhere."""
  cfg = CONFIGS[name]
  real = param_shapes(build_model(cfg))
  abstract = param_shapes(abstract_model(cfg))
  assert real == abstract
  assert {dt for _, dt in real.values()} == {cfg.param_dtype}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_embedding_split(name):
  """Embedding = token table (+ the untied LM head); the rest is non-embedding."""
  cfg = CONFIGS[name]
  counts = count_params(cfg)
  expected = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
  assert counts.embedding == expected
  assert counts.non_embedding == counts.total - expected
  assert counts.to_dict() == {"total": counts.total, "embedding": expected,
                              "non_embedding": counts.total - expected}


def test_untied_head_adds_exactly_one_embedding_table():
  """Untying adds vocab*d parameters, all of them counted as embedding."""
  tied, untied = count_params(CONFIGS["tied"]), count_params(CONFIGS["untied"])
  extra = CONFIGS["tied"].vocab_size * CONFIGS["tied"].d_model
  assert untied.total - tied.total == extra
  assert untied.embedding - tied.embedding == extra
  assert untied.non_embedding == tied.non_embedding


def test_gqa_shrinks_only_kv_projections():
  """Fewer KV heads removes exactly 2*d*(n_heads - n_kv)*head_dim per layer."""
  base = dict(vocab_size=64, d_model=64, n_layers=3, n_heads=8, d_ff=96, max_seq_len=16)
  mha = count_params(ModelConfig(n_kv_heads=8, **base)).total
  gqa = count_params(ModelConfig(n_kv_heads=2, **base)).total
  assert mha - gqa == 3 * 2 * 64 * (8 - 2) * 8


def test_llama_2_7b_published_count():
  """Llama-2-7B's shape gives its published 6,738,415,616 parameters (abstract, no arrays)."""
  cfg = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                    d_ff=11008, max_seq_len=4096, tie_embeddings=False)
  counts = count_params(cfg)
  assert counts.total == 6_738_415_616 == _llama_formula(cfg)
  assert counts.embedding == 2 * 32000 * 4096


def test_nanogpt_config_has_800k_params():
  """The nanoGPT comparison config is documented as exactly 800,000 parameters."""
  cfg = ModelConfig.from_dict(nanogpt_shakespeare_char_cpu.get_config().model.to_dict())
  counts = count_params(cfg)
  assert counts.total == 800_000
  assert counts.embedding == 65 * 128
  assert counts.total == _llama_formula(cfg)


def test_count_compiles_nothing():
  """Counting a never-seen config must not compile or allocate: the gate runs before XLA."""
  # Sanity: the listener does see a real jit compile, so a 0 below means something.
  before = _COUNTER.n
  jax.jit(lambda x: x * 3 + 1)(jnp.arange(7.0)).block_until_ready()
  assert _COUNTER.n > before, "compile listener did not fire on a real jit compile"

  cfg = ModelConfig(vocab_size=97, d_model=40, n_layers=3, n_heads=5, n_kv_heads=1,
                    d_ff=173, max_seq_len=32, tie_embeddings=False)
  live_before = len(jax.live_arrays())
  compiles_before = _COUNTER.n
  counts = count_params(cfg)
  assert _COUNTER.n - compiles_before == 0
  assert len(jax.live_arrays()) == live_before
  assert counts.total == _llama_formula(cfg)
  assert counts.embedding == 2 * 97 * 40
