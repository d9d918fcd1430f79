"""scripts/gpu_bench.py runs end to end at toy size on CPU (so it cannot rot), records a
variant that cannot run as that variant's result, and its GPU variants are the ~0.5B models
the issue names, with cuDNN attention selected on a GPU."""
import json
import subprocess
import sys

import pytest

import helpers
from models import attention
from models.config import ModelConfig
from models.params import count_params

sys.path.insert(0, str(helpers.REPO / "scripts"))
import gpu_bench  # noqa: E402

pytestmark = pytest.mark.e2e


def _bench(*args: str) -> subprocess.CompletedProcess:
  return helpers.start([str(helpers.REPO / "scripts" / "gpu_bench.py"), *args],
                       {**helpers.child_env(), "JAX_PLATFORMS": "cpu"}, 600)


def test_toy_run_end_to_end(tmp_path):
  out = tmp_path / "rows.jsonl"
  proc = _bench("--toy", "--variants=toy_llama_T64,toy_llama_cudnn", "--steps=2",
                "--warmup=1", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  ok, failed = rows
  assert ok["status"] == "ok" and ok["variant"] == "toy_llama_T64"
  assert ok["compile_s"] > 0 and ok["step_ms"] > 0 and ok["tokens_per_s"] > 0
  assert 0 < ok["mfu"] < 1 and ok["hfu"] > 0 and ok["peak_hbm_gib"] > 0
  assert ok["loss_sane"] and abs(ok["loss_first"] - ok["ln_vocab"]) < 0.5
  assert ok["jaxpr_dense_mixed_dots"] == 0  # bf16 dense matmuls are bf16 x bf16
  assert ok["hlo_fused_attention"] == 0 and ok["hlo_gemm"] > 0  # no cuDNN on a CPU
  assert failed["status"].startswith("error:") and "cuDNN" in failed["status"]
  assert "toy_llama_cudnn" in proc.stdout.splitlines()[-1]  # the table lists it too


def test_failures_are_classified():
  assert gpu_bench.classify_failure(None, "") == "timeout"
  assert gpu_bench.classify_failure(1, "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: "
                                       "Out of memory while trying to allocate") == "oom"
  err = gpu_bench.classify_failure(1, "Traceback...\nValueError: bad shape\n")
  assert err == "error: ValueError: bad shape"


def test_unknown_variant_refused_in_one_line():
  proc = _bench("--toy", "--variants=toy_nope")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
  assert proc.stderr.startswith("ERROR: ConfigError:") and "toy_nope" in proc.stderr


@pytest.mark.parametrize("name", gpu_bench.DEFAULT)
def test_gpu_variants_are_half_billion_models_with_cudnn(name):
  spec = gpu_bench.VARIANTS[name]
  cfg = ModelConfig.from_dict(spec["model"])
  n = count_params(cfg).total
  assert 0.4e9 < n < 0.6e9, n
  assert cfg.dtype == "bfloat16" and cfg.param_dtype == "float32"
  assert spec["seq_len"] in (2048, 4096) and cfg.max_seq_len == spec["seq_len"]
  assert attention.resolve(cfg, "gpu") == "cudnn"
  if name.startswith("qwen"):
    assert cfg.vocab_size == 151_936 and cfg.tie_embeddings
