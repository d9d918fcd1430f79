"""The suite's shared persistent compilation cache (tests/conftest.py) is safe for the tests
that count compiles: a hit still fires the backend-compile event they count."""
import os

import jax
import jax.numpy as jnp
from jax import monitoring

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
HIT_EVENT = "/jax/compilation_cache/cache_hits"


def test_cache_hit_still_counts_as_a_compile():
  assert os.environ.get("JAX_COMPILATION_CACHE_DIR"), "conftest sets the suite's cache"
  seen = []
  monitoring.register_event_listener(lambda event, **kw: seen.append(event))
  monitoring.register_event_duration_secs_listener(lambda event, secs, **kw: seen.append(event))
  x = jax.ShapeDtypeStruct((37,), jnp.float32)
  counts = []
  for _ in range(2):  # two function objects, one program: the second is a persistent-cache hit
    seen.clear()
    jax.jit(lambda v: jnp.cumsum(jnp.sin(v) * 3.0 + 0.125)).lower(x).compile()
    counts.append((seen.count(COMPILE_EVENT), seen.count(HIT_EVENT)))
  assert counts[1] == (1, 1), counts
