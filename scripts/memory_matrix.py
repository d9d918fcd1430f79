"""The memory model against XLA's compiled figure, as a markdown table (docs/benchmarks.md).

`PYTHONPATH=$PWD python scripts/memory_matrix.py [--fast-compile]`

Runs tests/children/memory_matrix.py (the matrix of tests/test_memory_model.py) on 8 fake CPU
devices in a child process and prints one row per configuration: the per-device figure XLA
compiled (arguments + outputs - aliases + temporaries), gates/memory.py's estimate, the
relative error, the phase the estimate peaks at and the compile seconds. `--fast-compile`
adds the test suite's XLA flags (tests/helpers.py FAST_COMPILE_FLAGS): the figures do not
change, the compiles take about half the time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def main(fast: bool) -> None:
  flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), FAST if fast else "",
                               "--xla_force_host_platform_device_count=8") if f)
  env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "children",
                                                      "memory_matrix.py")],
                        env=env, cwd=REPO, capture_output=True, text=True, check=False)
  if proc.returncode:
    sys.exit(proc.stderr[-3000:])
  out = json.loads(proc.stdout.splitlines()[-1])
  print(f"XLA_FLAGS={out['xla_flags']}\n")
  print("| config | mesh (data x fsdp x tensor) | N (teacher) | batch / grad_accum | remat, "
        "layers | XLA MiB | estimate MiB | error | estimate peaks at | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in out["rows"]:
    n = f"{r['n_params'] / 1e6:.2f}M" + (f" ({r['teacher_params'] / 1e6:.2f}M)"
                                          if r["teacher_params"] else "")
    print(f"| {r['name']} | {' x '.join(map(str, r['mesh']))} | {n} | {r['global_batch']} / "
          f"{r['grad_accum']} | {r['remat']}, {'scanned' if r['scan'] else 'unrolled'} | "
          f"{r['xla'] / 2**20:.1f} | {r['estimate'] / 2**20:.1f} | {r['error']:+.1%} | "
          f"{r['phase']} | {r['compile_s']:.1f} |")
  worst = max(out["rows"], key=lambda r: abs(r["error"]))
  print(f"\n{len(out['rows'])} configurations; largest error {worst['error']:+.1%} "
        f"({worst['name']})")


if __name__ == "__main__":
  main("--fast-compile" in sys.argv[1:])
