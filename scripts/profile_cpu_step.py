"""Where a config's CPU train step spends its time: a `jax.profiler` trace of the run's own step
(`RunSetup`, the devices and mesh the run would use), summed per device and step by kind of op
(YNNPACK dot fusions, the all-reduce and its rendezvous wait, copies and transposes, element-wise
fusions), with the CPU time each thread group took. The figures behind docs/decisions.md "CPU
hosts"; the trace stays in OUT for TensorBoard's profile plugin.

  PYTHONPATH=$PWD python scripts/profile_cpu_step.py configs/nanogpt_shakespeare_char_cpu.py \
      [STEPS] [OUT] [--config.field=value ...]
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys

from absl import flags
from ml_collections import config_flags

_WRAPPERS = re.compile(r"ThunkExecutor|Wait|Execute|PjitFunction|^\$|LaunchOnDevice")


def thread_cpu() -> dict[str, float]:
  """CPU seconds so far of this process's threads, summed by thread name (Linux /proc)."""
  out: collections.Counter = collections.Counter()
  tick = os.sysconf("SC_CLK_TCK")
  for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/stat") as f:
      stat = f.read()
    name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
    out[name] += (int(rest[11]) + int(rest[12])) / tick
  return out


def op_times(trace_dir: str, steps: int, devices: int) -> tuple[dict[str, float], float]:
  """(ms per device and step by op kind, ms per step the Rendezvous waits took) of the trace."""
  path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  names = {(e.get("pid"), e.get("tid")): e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "thread_name"}
  kinds: collections.Counter = collections.Counter()
  wait = 0.0
  for e in events:
    thread = names.get((e.get("pid"), e.get("tid")), "")
    if e.get("ph") != "X" or "python" in thread.lower():
      continue
    if e["name"] == "Rendezvous":
      wait += e["dur"]
    elif not _WRAPPERS.search(e["name"]):
      kinds[re.sub(r"[._]\d+$", "", e["name"])] += e["dur"]
  per = steps * devices * 1000.0
  return {k: v / per for k, v in kinds.most_common()}, wait / per


def main() -> None:
  config_path, steps, out = sys.argv[1], 20, "/tmp/pregate_cpu_profile"
  rest = sys.argv[2:]
  if rest and not rest[0].startswith("--"):
    steps, rest = int(rest[0]), rest[1:]
  if rest and not rest[0].startswith("--"):
    out, rest = rest[0], rest[1:]
  config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
  flags.FLAGS([sys.argv[0], f"--config={config_path}", *rest])
  import jax

  from train.run.setup import scratch_run
  with scratch_run(flags.FLAGS.config) as run:
    rs = run.rs
    it = rs.train_iter(run.data.train, 3 * steps + 40)
    state, _ = rs.time_steps(rs.state.fresh_state(), it, 20, steps)
    before = thread_cpu()
    state, plain = rs.time_steps(state, it, 0, steps)
    after = thread_cpu()
    with jax.profiler.trace(out, create_perfetto_trace=True):
      state, traced = rs.time_steps(state, it, 0, steps)
    devices = jax.device_count()
  print(f"{config_path}: {devices} device(s); step {statistics.median(plain) * 1e3:.2f} ms "
        f"(median of {steps}), {statistics.median(traced) * 1e3:.2f} ms under the profiler")
  print("CPU ms per step by thread group (untraced):")
  for name in sorted(after, key=lambda n: after[n] - before.get(n, 0), reverse=True):
    used = (after[name] - before.get(name, 0)) / steps * 1e3
    if used >= 0.05:
      print(f"  {name:24s} {used:7.2f}")
  kinds, wait = op_times(out, steps, devices)
  print(f"ms per device and step by op kind (traced; all-reduce includes {wait:.2f} ms of "
        "rendezvous wait):")
  for kind, ms in list(kinds.items())[:20]:
    print(f"  {kind:32s} {ms:7.3f}")
  print(f"trace: {out} (tensorboard --logdir {out})")


if __name__ == "__main__":
  main()
