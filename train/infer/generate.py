"""Text generation from a restored model, KV-cached (the library behind `pregate-sample`).

The prompt is prefilled in one `decode` call that writes the cache from index 0; then one jitted
`lax.scan` samples a token and decodes it per step, so the prompt is never re-run and the whole
generation is one compiled program. RoPE uses absolute positions and the model never saw one
past max_seq_len, so prompt + new tokens must fit in it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core.errors import ConfigError, DataError
from models.transformer import Transformer
from train.data.tokenizer import Tokenizer


def _pick(logits: jax.Array, key: jax.Array, temperature: jax.Array, top_k: int,
          greedy: bool) -> jax.Array:
  """Next token [B] from logits [B, vocab]: argmax, or a draw from the tempered top-k."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "greedy"))
def _generate(graphdef: nnx.GraphDef, state: nnx.State, prompt: jax.Array, key: jax.Array,
              temperature: jax.Array, *, max_new_tokens: int, top_k: int,
              greedy: bool) -> jax.Array:
  """New token ids [max_new_tokens] after `prompt` [1, P]: prefill, then scan sample+decode."""
  model = nnx.merge(graphdef, state)
  p = prompt.shape[1]
  logits, caches = model.decode(prompt, caches=model.init_cache(1, p + max_new_tokens),
                                cache_index=0)

  def step(carry: tuple, index: jax.Array) -> tuple[tuple, jax.Array]:
    caches, last, key = carry
    key, sub = jax.random.split(key)
    token = _pick(last, sub, temperature, top_k, greedy)
    logits, caches = model.decode(token[:, None], caches=caches, cache_index=index)
    return (caches, logits[:, -1], key), token[0]

  indices = p + jnp.arange(max_new_tokens, dtype=jnp.int32)
  _, tokens = jax.lax.scan(step, (caches, logits[:, -1], key), indices)
  return tokens


def check_request(model: Transformer, n_prompt: int, max_new_tokens: int, temperature: float,
                  top_k: int) -> None:
  """Refuse, in one line naming the fix, what generation cannot honour."""
  limit = model.cfg.max_seq_len
  if n_prompt < 1:
    raise DataError("the prompt is empty; pass --prompt with at least one character")
  if max_new_tokens < 0:
    raise ConfigError(f"--max_new_tokens must be >= 0, got {max_new_tokens}")
  if n_prompt + max_new_tokens > limit:
    raise ConfigError(f"prompt ({n_prompt} tokens) + max_new_tokens ({max_new_tokens}) = "
                      f"{n_prompt + max_new_tokens} exceeds the model's max_seq_len={limit}; "
                      f"shorten the prompt or lower --max_new_tokens to "
                      f"{max(limit - n_prompt, 0)}")
  if not temperature >= 0:
    raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
  if top_k < 0:
    raise ConfigError(f"--top_k must be >= 0 (0 = no filtering), got {top_k}")


def generate(model: Transformer, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> str:
  """The text generated after `prompt` (not including it).

  temperature 0 is greedy; top_k > 0 keeps only the k most likely tokens; the same seed gives
  the same text.
  """
  ids = tokenizer.encode(prompt)
  check_request(model, len(ids), max_new_tokens, temperature, top_k)
  if max_new_tokens == 0:
    return ""
  vocab = model.cfg.vocab_size
  graphdef, state = nnx.split(model)
  tokens = _generate(graphdef, state, jnp.asarray(ids, jnp.int32)[None],
                     jax.random.key(seed), jnp.float32(max(temperature, 1e-6)),
                     max_new_tokens=int(max_new_tokens), top_k=0 if top_k >= vocab else top_k,
                     greedy=temperature == 0)
  return tokenizer.decode(np.asarray(jax.device_get(tokens)))
