"""Every execution setting this CPU host cannot run is refused by preflight, in one line that
names the fix, before the data is prepared (nothing written, no data dir); and the refused set
is exactly the set that fails when the step is really compiled and run here."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from configs import base
from core.errors import ConfigError
from models.config import ModelConfig
from train.run.preflight import preflight
from train.runtime import gpu_runtime, platform
from train.state import step as step_lib

# The execution settings whose support depends on the platform: attention backend x compute
# dtype (parameters in the compute dtype; every remat policy, scanned layers, the chunked loss
# and any parameter dtype run on CPU: train/runtime/platform.py).
GRID = list(itertools.product(("auto", "einsum", "xla", "cudnn"),
                              ("float32", "bfloat16", "float16")))


def _config(**model):
  c = base.get_config()
  for key, value in helpers.TINY.items():
    section, _, field = key.rpartition(".")
    (c[section] if section else c)[field] = value
  c.model.update(vocab_size=65, **model)
  return c


def _step_fails(c) -> bool:
  """Whether the train step's model part (loss and gradients: the optimizer is dtype-blind)
  really fails here, at trace, compile or run time."""
  try:
    graphdef, init = step_lib.init_fn(ModelConfig.from_dict(c.model.to_dict()),
                                      step_lib.make_optimizer(c), 0)
    toks = np.random.default_rng(0).integers(0, 65, (c.batch.global_batch, c.batch.seq_len + 1))
    batch = {"inputs": jnp.asarray(toks[:, :-1]), "targets": jnp.asarray(toks[:, 1:])}
    grads = jax.jit(jax.grad(step_lib.make_loss_fn(graphdef)))
    jax.block_until_ready(grads(jax.jit(init)().params, batch))
  except Exception:  # pylint: disable=broad-except  # any failure is what preflight must foresee
    return True
  return False


def _refusal(c, tmp_path) -> str | None:
  """preflight's one-line refusal of this config (None if it may run); it writes nothing."""
  workdir = tmp_path / "run"
  try:
    preflight(c, str(workdir), force=True)
  except platform.PlatformConfigError as e:
    assert isinstance(e, ConfigError) and "\n" not in str(e) and " set " in str(e)
    return str(e)
  finally:
    assert not workdir.exists(), "preflight wrote into the workdir (or its data dir)"
  return None


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="enumerates the CPU's refusals")
@pytest.mark.parametrize("attention, dtype", GRID)
def test_refused_before_the_data_exactly_when_the_step_fails(attention, dtype, tmp_path):
  c = _config(attention=attention, dtype=dtype, param_dtype=dtype)
  refusal = _refusal(c, tmp_path)
  assert (refusal is not None) == _step_fails(c), refusal
  if refusal is not None:
    assert "model.attention=auto" in refusal


@pytest.mark.parametrize("name", ["cuda", "tpu"])
def test_jax_platforms_naming_a_backend_this_host_lacks_is_refused(name, tmp_path,
                                                                   monkeypatch):
  if (gpu_runtime.cuda_available() if name == "cuda" else platform.planned({}) == "tpu"):
    pytest.skip(f"this host can start {name}")
  monkeypatch.setenv("JAX_PLATFORMS", name)
  refusal = _refusal(_config(), tmp_path)
  assert refusal is not None and "JAX_PLATFORMS=cpu" in refusal


def test_planned_platform_is_known_without_starting_jax():
  assert platform.planned({"JAX_PLATFORMS": "cpu"}) == "cpu"
  assert platform.planned({"JAX_PLATFORMS": "cuda,cpu"}) == "gpu"
  assert platform.environment_problems({"JAX_PLATFORMS": "cpu"}) == []
  cfg = ModelConfig.from_dict(_config(attention="cudnn", dtype="bfloat16").model.to_dict())
  with pytest.raises(platform.PlatformConfigError, match="needs an NVIDIA GPU"):
    platform.check(cfg, {"JAX_PLATFORMS": "cpu"})


