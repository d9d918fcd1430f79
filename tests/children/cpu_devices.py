"""Child: applies split_cpu_cores for a 12-row batch and prints the device count JAX then
starts with. argv[1] = multi | single, argv[2] = mesh.cpu_devices."""
import json
import sys

from configs import base
from models.config import ModelConfig
from train.runtime import distributed

c = base.get_config()
c.batch.global_batch = 12
c.mesh.cpu_devices = int(sys.argv[2])
m = ModelConfig(vocab_size=65, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                max_seq_len=32)
distributed.split_cpu_cores(c, m, multi_process=sys.argv[1] == "multi")
import jax  # noqa: E402  (only after the device count is set)

print(json.dumps(jax.device_count()))
