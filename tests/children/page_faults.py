"""Child: prints the minor page faults per call of a jitted function whose ~64 MiB of
temporaries exceed glibc's largest mmap threshold (calls 11-20, once the heap has grown).
argv[1] = reexec | plain."""
import json
import resource
import sys

from train.runtime import host_memory

if sys.argv[1] == "reexec":
  host_memory.reexec_with_tunables()
import os

import jax
import jax.numpy as jnp

f = jax.jit(lambda x: (jnp.sin(x @ x.T) @ x).sum())
x = jnp.ones((4096, 64), jnp.float32)
for _ in range(10):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(x).block_until_ready()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"faults_per_call": (after - before) / 10,
                  "tunables": os.environ.get("GLIBC_TUNABLES")}))
