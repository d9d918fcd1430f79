"""pregate-bench times the step train.main trains (both set it up with RunSetup.for_run), with a
scanned training state saved in the stored layout; bad input is one line, exit 2."""
from __future__ import annotations

import pytest

import helpers

pytestmark = pytest.mark.e2e


def _bench(*args: str) -> helpers.Result:
  return helpers.command("train.cli.bench", f"--config={helpers.CONFIG}", *args, timeout=600)


def test_bench_prints_the_training_steps_figures(prepared_data):
  res = _bench(*helpers.tiny_flags(prepared_data, {"model.scan_layers": True}), "--steps=3",
               "--warmup=1", "--saves=2")
  assert res.rc == 0, res.stderr[-3000:]
  figures = dict(line.split(None, 1) for line in res.stdout.splitlines() if line.strip())
  for key in ("config_params", "compile_s", "tokens_per_s", "step_ms", "save_blocking_ms"):
    assert key in figures, sorted(figures)
  num = {k: float(v.replace(",", "")) for k, v in figures.items()
         if v.replace(",", "").replace(".", "", 1).replace("e-", "").replace("e+", "").isdigit()}
  assert num["tokens_per_s"] > 0
  # The MFU it reports is its own arithmetic: model FLOPs/s (the model's FLOPs per token at the
  # tokens/s it measured) over the float32 peak it measured (figures print 4 digits).
  from models.config import ModelConfig
  from train.state import flops
  config = helpers.tiny_config(prepared_data, {"model.scan_layers": True})
  fpt = flops.flops_per_token(ModelConfig.from_dict(config.model.to_dict()),
                              int(num["config_params"]), config.batch.seq_len)
  assert num["model_gflops"] == pytest.approx(num["tokens_per_s"] * fpt / 1e9, rel=2e-3)
  assert num["mfu_vs_float32"] == pytest.approx(
      num["model_gflops"] / num["peak_float32_gflops"], rel=2e-3)
  assert 0 < num["mfu_vs_float32"] < 1


@pytest.mark.parametrize("args, error", [
    (("--config.model.n_heads=5",), "ModelConfigError"),
    (("--steps=0",), "ConfigError"),
    (("--config.model.n_layers=two",), "Error"),
    (("--config.model.attention=cudnn",), "PlatformConfigError"),  # before any data
])
def test_bench_bad_input_is_one_line(args, error):
  helpers.assert_one_line_error(_bench(*args), error)
