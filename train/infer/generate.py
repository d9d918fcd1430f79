"""Text generation from a restored model, KV-cached (the library behind `pregate-sample`).

The prompt is prefilled in one `decode` call that writes the cache from index 0; then one jitted
`lax.scan` samples a token and decodes it per step, so the prompt is never re-run and the whole
generation is one compiled program. RoPE uses absolute positions and the model never saw one
past max_seq_len, so longer texts slide a window over the last max_seq_len tokens, re-run from
position 0 (nanoGPT's sampler crops its context the same way); within the window the KV cache
keeps one decode step per token.
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

SEPARATOR = "\n---------------\n"  # between samples, as nanoGPT's sample.py prints them


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


def _picks(model: Transformer, caches: list, logits: jax.Array, key: jax.Array, index: int,
           n: int, temperature: jax.Array, top_k: int, greedy: bool
           ) -> tuple[jax.Array, jax.Array]:
  """n tokens [n, B] continuing `logits` [B, vocab]: each is picked and (but the last) decoded
  into `caches` at index, index + 1, ...; returns (key, tokens)."""
  def step(carry: tuple, at: jax.Array) -> tuple[tuple, jax.Array]:
    caches, last, key = carry
    key, sub = jax.random.split(key)
    token = _pick(last, sub, temperature, top_k, greedy)
    logits, caches = model.decode(token[:, None], caches=caches, cache_index=at)
    return (caches, logits[:, -1], key), token

  (_, last, key), tokens = jax.lax.scan(step, (caches, logits, key),
                                        index + jnp.arange(n - 1, dtype=jnp.int32))
  key, sub = jax.random.split(key)
  return key, jnp.concatenate([tokens, _pick(last, sub, temperature, top_k, greedy)[None]])


def window_plan(n_prompt: int, max_new_tokens: int, window: int, shift: int
                ) -> tuple[int, int]:
  """(tokens picked with the prompt's KV cache, re-prefills after it). The first group's
  contexts grow from the prompt to `window` tokens; past that, each re-prefill keeps the last
  window - shift + 1 tokens and picks `shift` more from the cache it fills."""
  first = min(max_new_tokens, window - n_prompt + 1)
  return first, -(-(max_new_tokens - first) // shift)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "top_k", "greedy",
                                             "shift"))
def _generate(graphdef: nnx.GraphDef, state: nnx.State, prompt: jax.Array, key: jax.Array,
              temperature: jax.Array, *, max_new_tokens: int, top_k: int, greedy: bool,
              shift: int) -> jax.Array:
  """New token ids [B, max_new_tokens] after `prompt` [B, P] (P <= max_seq_len).

  Within the context every token is one cached decode step. Beyond it, a sliding window over the
  last max_seq_len tokens (nanoGPT's sampler): the window is re-run from position 0, as in
  training, every `shift` tokens; shift 1 makes every token see exactly the last max_seq_len.
  """
  model = nnx.merge(graphdef, state)
  window = model.cfg.max_seq_len
  b, p = prompt.shape
  first, chunks = window_plan(p, max_new_tokens, window, shift)
  seq = jnp.concatenate([prompt, jnp.zeros((b, first + chunks * shift), jnp.int32)], axis=1)
  logits, caches = model.decode(prompt, caches=model.init_cache(b, p + first - 1),
                                cache_index=0)
  key, tokens = _picks(model, caches, logits[:, -1], key, p, first, temperature, top_k, greedy)
  seq = seq.at[:, p:p + first].set(tokens.T)
  context = window - shift + 1

  def chunk(carry: tuple, end: jax.Array) -> tuple[tuple, None]:
    seq, key = carry
    ctx = jax.lax.dynamic_slice_in_dim(seq, end - context, context, axis=1)
    logits, caches = model.decode(ctx, caches=model.init_cache(b, window), cache_index=0)
    key, tokens = _picks(model, caches, logits[:, -1], key, context, shift, temperature,
                         top_k, greedy)
    return (jax.lax.dynamic_update_slice_in_dim(seq, tokens.T, end, axis=1), key), None

  if chunks:  # (a scan traces its body even for zero iterations)
    ends = p + first + shift * jnp.arange(chunks, dtype=jnp.int32)
    (seq, _), _ = jax.lax.scan(chunk, (seq, key), ends)
  return seq[:, p:p + max_new_tokens]


def check_request(model: Transformer, n_prompt: int, max_new_tokens: int, temperature: float,
                  top_k: int, num_samples: int = 1, window_shift: int = 1) -> None:
  """Refuse, in one line naming the fix, what generation cannot honour."""
  limit = model.cfg.max_seq_len
  if n_prompt < 1:
    raise DataError("the prompt is empty; pass --prompt with at least one character")
  if max_new_tokens < 0:
    raise ConfigError(f"--max_new_tokens must be >= 0, got {max_new_tokens}")
  if not temperature >= 0:
    raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
  if top_k < 0:
    raise ConfigError(f"--top_k must be >= 0 (0 = no filtering), got {top_k}")
  if num_samples < 1:
    raise ConfigError(f"--num_samples must be >= 1, got {num_samples}")
  if not 1 <= window_shift <= limit:
    raise ConfigError(f"--window_shift must be between 1 and the model's max_seq_len={limit}, "
                      f"got {window_shift}")


def generate_samples(model: Transformer, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
                     temperature: float = 1.0, top_k: int = 0, seed: int = 0,
                     num_samples: int = 1, window_shift: int = 1) -> list[str]:
  """`num_samples` texts generated after `prompt` (not including it), drawn together.

  temperature 0 is greedy; top_k > 0 keeps only the k most likely tokens; the same seed gives
  the same texts. A prompt longer than max_seq_len conditions on its last max_seq_len tokens,
  and generation continues past max_seq_len with a sliding window (see `_generate`).
  """
  ids = tokenizer.encode(prompt)
  check_request(model, len(ids), max_new_tokens, temperature, top_k, num_samples, window_shift)
  if max_new_tokens == 0:
    return [""] * num_samples
  vocab = model.cfg.vocab_size
  graphdef, state = nnx.split(model)
  ids = np.asarray(ids[-model.cfg.max_seq_len:], np.int32)
  tokens = _generate(graphdef, state, jnp.asarray(np.tile(ids, (num_samples, 1))),
                     jax.random.key(seed), jnp.float32(max(temperature, 1e-6)),
                     max_new_tokens=int(max_new_tokens), top_k=0 if top_k >= vocab else top_k,
                     greedy=temperature == 0, shift=int(window_shift))
  return [tokenizer.decode(row) for row in np.asarray(jax.device_get(tokens))]


def generate(model: Transformer, tokenizer: Tokenizer, prompt: str, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, seed: int = 0,
             window_shift: int = 1) -> str:
  """The text generated after `prompt` (one sample of `generate_samples`)."""
  return generate_samples(model, tokenizer, prompt, max_new_tokens, temperature, top_k, seed,
                          1, window_shift)[0]
