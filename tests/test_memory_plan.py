"""`pregate-plan --device`: the analytic breakdown per device, a verdict and a fix, from the
config alone (contract memory-fit). The 1B Llama's parameter and optimizer bytes equal hand
arithmetic; a 7B Llama on one 24 GB device gets the arithmetic of why nothing fits, on eight a
fix whose own estimate fits; the margin and capacities are the contract's."""
import re
from fractions import Fraction

import pytest

from configs import llama_1b, llama_7b
from core import contracts
from core.errors import ConfigError, ContractError
from gates import device_memory
from models.config import ModelConfig
from models.params import count_params
from train.cli import memory_plan


def _bytes(lines: list[str], name: str) -> int:
  row = next(ln for ln in lines if ln.split()[:1] == [name])
  return int(row.split()[1].replace(",", ""))


def _apply(config, fix_line: str):
  for key, value in re.findall(r"--config\.(\S+)=(\S+)", fix_line):
    section, leaf = key.split(".")
    old = config[section][leaf]
    config[section][leaf] = type(old)(value) if not isinstance(old, bool) else value == "True"
  return config


def test_one_billion_on_h100_matches_hand_arithmetic():
  config = llama_1b.get_config()
  n = count_params(ModelConfig.from_dict(dict(config.model))).total
  assert 1.0e9 < n < 1.2e9
  lines, fits = memory_plan.lines(config, "h100", 1)
  assert _bytes(lines, "params") == 4 * n  # float32 parameters, one device
  # AdamW's mu and nu in the param dtype, plus two int32 step counts, the spike guard's count
  # and its float32 history of loss and gradient norm (2 x spike_window) with its index.
  window = config.guard.spike_window
  assert _bytes(lines, "optimizer") == 2 * 4 * n + 3 * 4 + 8 * window + 4
  assert "h100: NVIDIA H100" in "\n".join(lines)
  verdict = next(ln for ln in lines if ln.startswith("memory: "))
  assert "analytic estimate" in verdict and "does NOT fit" in verdict and not fits
  fixed, fits_now = memory_plan.lines(_apply(config, lines[-1]), "h100", 1)
  assert fits_now, fixed[-1]
  # The shape it was written for: eight of them, the batch split eight ways over data.
  lines8, fits8 = memory_plan.lines(llama_1b.get_config(), "h100", 8)
  assert fits8 and "fits, headroom" in lines8[-1], lines8[-1]
  assert _bytes(lines8, "params") == 4 * n  # data parallelism replicates the parameters


def test_seven_billion_on_a_24gb_device():
  lines, fits = memory_plan.lines(llama_7b.get_config(), "rtx4090", 1)
  assert not fits
  assert lines[-1].startswith("fix: nothing fits") and "GiB per device" in lines[-1]
  assert "even with fsdp=1" in lines[-1] and "5 x 25.10 GiB" in lines[-1]
  # Eight 24 GB devices: still nothing, and the lightest setting is named with its breakdown.
  lines8, fits8 = memory_plan.lines(llama_7b.get_config(), "rtx4090", 8)
  assert not fits8 and "the lightest setting (--config." in lines8[-1], lines8[-1]
  # Eight H100s: a fix (fsdp over all eight, a larger grad_accum), and its own plan fits.
  lines8, fits8 = memory_plan.lines(llama_7b.get_config(), "h100", 8)
  assert not fits8 and lines8[-1].startswith("fix: --config."), lines8[-1]
  fixed, ok = memory_plan.lines(_apply(llama_7b.get_config(), lines8[-1]), "h100", 8)
  assert ok, fixed[-2:]


def test_margin_and_capacities_come_from_the_contract():
  data = contracts.load(device_memory.CONTRACT)
  contract = device_memory.parse(data)
  assert contract.margin == Fraction(5, 100) and contract.tolerance == Fraction(2, 10)
  assert contract.device("H100").capacity == 80 * 10**9
  assert contract.usable(100) == 95
  edited = device_memory.parse({**data, "margin": "0.5"})
  assert edited.usable(100) == 50
  assert not device_memory.judge(edited, 60, 100, "x", "y").fits
  assert device_memory.judge(contract, 60, 100, "x", "y").fits
  with pytest.raises(ContractError, match="margin"):
    device_memory.parse({**data, "margin": "1.5"})
  with pytest.raises(ConfigError, match="known: h100"):
    contract.device("tpu-v9")
