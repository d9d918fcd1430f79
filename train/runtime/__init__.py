"""Process start-up and the environment a run executes in: CPU device split, multi-host
`jax.distributed`, the malloc tunable, provenance (library versions, git commit). May import
core/ and models/ only."""
