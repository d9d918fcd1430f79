"""scripts/gpu_bench.py, the one GPU check: its CPU dry run goes the whole way (probe, every
check, every matrix row, one figures file) so the script cannot rot before a GPU is lent; the
budget skips what it cannot fit; a failed install is written down and ends the run in one line;
a crashed item keeps what it printed; the GPU rows are the ~0.5B models the issue names."""
import json
import subprocess
import sys

import jax
import pytest

import helpers
from models import attention
from models.config import ModelConfig
from models.params import count_params

sys.path.insert(0, str(helpers.REPO / "scripts"))
import gpu_bench  # noqa: E402

pytestmark = pytest.mark.e2e

CHECK_FIELDS = {"name", "status", "figures", "detail"}
ROW_FIELDS = {"name", "status", "wall_s", "params", "batch", "seq_len", "dtype", "attention",
              "scan_layers", "remat", "loss_chunk", "compile_s", "step_ms", "tokens_per_s",
              "mfu", "hfu", "peak_source", "peak_hbm_gib", "memory_xla_bytes",
              "memory_estimate_bytes", "memory_error", "memory_phase", "capacity_bytes",
              "loss_first", "loss_last", "ln_vocab", "loss_sane", "hlo_gemm", "hlo_gemm_f32",
              "hlo_fused_attention"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  """One dry run for the module: (process, figures)."""
  out = tmp_path_factory.mktemp("gpu_bench") / "figures.json"
  proc = helpers.start([str(helpers.REPO / "scripts" / "gpu_bench.py"), "--dry_run",
                        f"--out={out}"], {**helpers.child_env(), "JAX_PLATFORMS": "cpu"}, 600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc, json.loads(out.read_text())


def test_dry_run_records_the_run(dry_run):
  _, fig = dry_run
  assert fig["schema"] == gpu_bench.SCHEMA and fig["dry_run"] is True
  assert fig["install"] == {"status": "skipped", "detail": "dry run"}  # never installs
  assert fig["command"].startswith("python scripts/gpu_bench.py --dry_run")
  assert fig["date"][:2] == "20" and 0 < fig["wall_s"] < fig["budget_s"]
  dev = fig["device"]
  assert dev["status"] == "ok" and dev["backend"] == "cpu" and dev["device_count"] >= 1
  assert dev["jax"] == jax.__version__ and dev["jaxlib"] and dev["device_kind"]


def test_dry_run_has_every_check(dry_run):
  _, fig = dry_run
  checks = {c["name"]: c for c in fig["checks"]}
  assert list(checks) == [*gpu_bench.CHECKS, "memory"]
  for c in checks.values():
    assert CHECK_FIELDS <= set(c), c
  for name in gpu_bench.CHECKS:  # meaningful on a CPU too: they must pass here
    assert checks[name]["status"] == "pass", checks[name]
  att = checks["attention"]["figures"]
  assert set(att["max_rel"]) == {"einsum", "xla"} and "cuDNN" in att["cudnn_error"]
  assert set(att["einsum_vs_xla"]) == {"out", "dq", "dk", "dv"}
  assert 0 < max(att["max_rel"].values()) < 0.05  # bf16 rounding shows, within the bound
  bf16 = checks["bf16_step"]["figures"]
  assert len(bf16["losses"]["bfloat16"]) == 3 and bf16["jaxpr_dense_mixed_dots"] == 0
  assert bf16["losses"]["bfloat16"] != bf16["losses"]["float32"]  # really computed in bf16
  scan = checks["scan_layers"]["figures"]["losses"]
  assert scan["scan=True"][2] < scan["scan=True"][0]  # the third loss follows an update
  memory = checks["memory"]
  assert memory["status"] in ("pass", "fail") and set(memory["figures"]) == set(gpu_bench.ROWS)
  assert "dry run: not counted" in memory["detail"]


def test_dry_run_has_every_row(dry_run):
  proc, fig = dry_run
  rows = {r["name"]: r for r in fig["rows"]}
  assert list(rows) == list(gpu_bench.ROWS)
  for name, r in rows.items():
    assert r["status"] == "ok" and ROW_FIELDS <= set(r), (name, sorted(ROW_FIELDS - set(r)))
    assert r["step_ms"] > 0 and r["tokens_per_s"] > 0 and r["compile_s"] > 0
    assert 0 < r["mfu"] < 1 and r["hfu"] > 0 and r["loss_sane"], r
    assert r["memory_xla_bytes"] > 0 and r["memory_estimate_bytes"] > 0
    assert r["hlo_gemm"] > 0 and r["hlo_fused_attention"] == 0  # no cuDNN on a CPU
    model = gpu_bench.spec(name, True)["model"]
    for knob in ("dtype", "remat", "loss_chunk"):
      assert r[knob] == model.get(knob, r[knob]), (name, knob)
  assert rows["llama_T4096"]["attention"] == "einsum"  # auto on a CPU
  assert rows["llama_T4096_xla"]["attention"] == "xla"
  assert rows["llama_T4096"]["scan_layers"] and not rows["llama_T4096_unrolled"]["scan_layers"]
  assert rows["llama_T2048_fp32"]["dtype"] == "float32"
  table = proc.stdout.splitlines()
  assert all(any(line.startswith(name + " ") for line in table) for name in rows)


def test_budget_skips_the_rest():
  """Once the deadline passes, what is left is recorded as skipped, not run; each item gets
  at most the time left, and the file is rewritten after each."""
  now, calls, writes = [0.0], [], []

  def run_one(item: str, left: float) -> dict:
    calls.append((item, left))
    now[0] += 60.0
    return {"name": item.split(":")[1], "status": "ok"}

  rows = gpu_bench.run_items(["row:a", "row:b", "row:c"], run_one, deadline=100.0,
                             timeout=80.0, into=[], done=lambda: writes.append(1),
                             clock=lambda: now[0])
  assert calls == [("row:a", 80.0), ("row:b", 40.0)]
  assert [r["status"] for r in rows] == ["ok", "ok", "skipped"] and len(writes) == 3
  assert rows[0]["wall_s"] == 60.0 and "budget" in rows[2]["detail"]


def test_failed_install_is_written_down_in_one_line(tmp_path, monkeypatch, capsys):
  out = tmp_path / "figures.json"
  monkeypatch.setattr(gpu_bench, "PIP_INSTALL", [sys.executable, "-c", (
      "import sys; print('Collecting jax[cuda12]==0.10.2'); sys.exit('ERROR: No matching "
      "distribution found for jax-cuda12-plugin==0.10.2')")])
  assert gpu_bench.main([f"--out={out}"]) == 1
  err = capsys.readouterr().err.strip()
  assert err.splitlines() == [err] and err.startswith("ERROR: pip install -e '.[gpu]' failed")
  assert "No matching distribution" in err and "--no-install" in err
  fig = json.loads(out.read_text())
  assert fig["install"]["status"] == "failed" and fig["install"]["rc"] == 1
  assert "Collecting" in fig["install"]["tail"][0] and fig["error"] in err
  assert fig["checks"] == [] and fig["rows"] == []  # nothing ran after it


def test_a_crashed_item_keeps_its_partial_figures(monkeypatch):
  """An OOM while stepping: the row is 'oom' and still carries the memory figures it printed
  once compiled."""
  partial = {"memory_xla_bytes": 90 * 2**30, "memory_error": -0.1}
  monkeypatch.setattr(gpu_bench.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
      a[0], 1, "PARTIAL " + json.dumps(partial) + "\n",
      "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating"))
  args = gpu_bench._args(["--no-install"])
  args.cache_dir = ""
  row = gpu_bench.run_child("row:llama_T4096", args, 10.0)
  assert row["name"] == "llama_T4096" and row["status"] == "oom"
  assert row["memory_xla_bytes"] == partial["memory_xla_bytes"]


def test_a_failing_child_is_a_status_not_a_crash():
  """A real child that fails (an item it does not know) is that item's one-line status."""
  args = gpu_bench._args(["--dry_run"])
  args.cache_dir = ""
  row = gpu_bench.run_child("row:no_such_row", args, 120.0)
  assert row["name"] == "no_such_row" and row["status"].startswith("error: KeyError"), row


def test_memory_check_judges_the_rows():
  row = lambda name, err: {"name": name, "memory_xla_bytes": 100, "memory_estimate_bytes": 90,
                           "memory_error": err, "memory_phase": "update", "capacity_bytes": 1,
                           "memory_tolerance": 0.2}
  assert gpu_bench.memory_check([row("a", -0.1), {"name": "b", "status": "oom"}],
                                False)["status"] == "pass"
  failed = gpu_bench.memory_check([row("a", -0.1), row("b", 0.3)], False)
  assert failed["status"] == "fail" and "b +30.0%" in failed["detail"]
  assert gpu_bench.memory_check([{"name": "a", "status": "skipped"}], False)["status"] == \
      "skipped"


def test_failures_are_classified():
  assert gpu_bench.classify_failure(None, "") == "timeout"
  assert gpu_bench.classify_failure(1, "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: "
                                       "Out of memory while trying to allocate") == "oom"
  err = gpu_bench.classify_failure(1, "Traceback...\nValueError: bad shape\n")
  assert err == "error: ValueError: bad shape"


def test_bad_arguments_refused_in_one_line(tmp_path, capsys):
  assert gpu_bench.main(["--rows=nope", "--steps=0", f"--out={tmp_path}/f.json"]) == 2
  err = capsys.readouterr().err.strip()
  assert err.splitlines() == [err] and err.startswith("ERROR: ConfigError:")
  assert "nope" in err and "--steps" in err and not (tmp_path / "f.json").exists()
  assert gpu_bench.main([f"--out={tmp_path}/missing/f.json", "--no-install"]) == 2
  assert "--out=" in capsys.readouterr().err


@pytest.mark.parametrize("name", [n for n in gpu_bench.ROWS if n != "default"])
def test_gpu_rows_are_half_billion_models(name):
  """The GPU sizes the issue names; bf16 rows resolve to cuDNN on a GPU; the dry run's toy row
  keeps every knob but the sizes."""
  gpu, toy = gpu_bench.spec(name, False), gpu_bench.spec(name, True)
  cfg = ModelConfig.from_dict(gpu["model"])
  assert 0.4e9 < count_params(cfg).total < 0.6e9
  assert gpu["seq_len"] in (2048, 4096) and cfg.max_seq_len == gpu["seq_len"]
  want = {"auto": "cudnn" if cfg.dtype == "bfloat16" else "xla"}.get(cfg.attention,
                                                                      cfg.attention)
  assert attention.resolve(cfg, "gpu") == want
  sizes = {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "loss_chunk",
           "max_seq_len"}
  assert {k: v for k, v in toy["model"].items() if k not in sizes} == \
      {k: v for k, v in gpu["model"].items() if k not in sizes}
  if name.startswith("qwen"):
    assert cfg.vocab_size == 151_936 and cfg.tie_embeddings and cfg.qkv_bias
