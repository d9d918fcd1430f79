"""Child of tests/test_launcher.py: prints what a command sees of its own process (argv, working
directory, import path, environment, JAX's device count and platforms, an import-time JAX
setting) as one JSON line, writes a line to stderr and exits 3; `sleep` as argv[1] sleeps
first."""
import json
import os
import sys
import time

import jax

if sys.argv[1:2] == ["sleep"]:
  time.sleep(60)
print(json.dumps({
    "name": __name__, "argv": sys.argv, "orig_argv": sys.orig_argv[1:], "cwd": os.getcwd(),
    "path0": sys.path[0], "probe": os.environ.get("PREGATE_TEST_PROBE"),
    "devices": jax.device_count(), "x64": bool(jax.config.jax_enable_x64),
    "platforms": jax.config.jax_platforms, "backend": jax.default_backend()}))
print("probe stderr", file=sys.stderr)
sys.exit(3)
