"""No refusal may claim a workdir: hypothesis draws invalid values for EVERY config field (wrong
type, out of range, negative, NaN/inf, empty, huge) and each run either starts or exits 2/3 with
one line, leaving the workdir byte-identical (or absent). The strategies come from each field's
declaration (gates/config_schema.py: type, range, choices), so a new field is fuzzed unasked.

The bulk runs in-process through `preflight` (what every run passes first) plus, for a value
it accepts, a dry start of every consumer of the config that runs before the first step (the
mesh check, optimizer and schedule, data iterator and eval batches, the checkpointer's
retention) which must not crash; a handful of real subprocess runs prove the CLI wiring. The
values drawn per field and the refusals are asserted, not only printed.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import test_main_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ml_collections import ConfigDict

import helpers
from configs import base
from core.config_fields import Field
from core.errors import PregateError
from gates import config_sanity, config_schema
from train.run.preflight import preflight

PASSING = test_main_cli.PASSING  # long enough that the Chinchilla gate passes unbypassed


def _wrong_types(rule: Field) -> list:
  out = [None, [], {}, "x", ""]
  if rule.type in ("int", "float", "choice", "str"):
    out.append(True)
  if rule.type == "int":
    out += [1.5, "1"]
  if rule.type in ("str", "choice"):
    out += [0, 1.0, "FLOAT32 "]
  if rule.type == "bool":
    out += [0, 1, "true"]
  return out


def invalid(rule: Field) -> st.SearchStrategy:
  """Values a field of this rule should refuse (a few, e.g. -1 for mesh.data, are valid)."""
  numbers = [st.sampled_from([math.nan, math.inf, -math.inf]),
             st.integers(max_value=-1), st.floats(max_value=-1e-12, allow_nan=False),
             st.sampled_from([2**31, 2**63, 10**30, 1e30, 1e308, 0, 0.0])]
  if math.isfinite(rule.low):
    numbers.append(st.just(rule.low - (1 if rule.type == "int" else 1e-9)))
  if math.isfinite(rule.high):
    numbers.append(st.just(rule.high + 1))
  return st.one_of(st.sampled_from(_wrong_types(rule)), *numbers)


def _config(data_dir: str, field: str, value) -> ConfigDict:
  """The passing tiny config with one field set to `value`, type checks off (a config file can
  hold anything; the CLI's own parser refuses some of these earlier)."""
  cfg = helpers.tiny_config(data_dir, PASSING).to_dict()
  *parents, leaf = field.split(".")
  node = cfg
  for p in parents:
    node = node[p]
  node[leaf] = value
  return ConfigDict(cfg, type_safe=False)


def _dry_start(config: ConfigDict, data_dir: str, tmp: Path) -> None:
  """What a started run does with the config before its first step, minus compiling."""
  import jax
  import numpy as np

  from models.config import ModelConfig
  from train.ckpt.checkpointer import Checkpointer
  from train.data import pipeline
  from train.state import sharding
  from train.state import step as step_lib
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  try:
    sharding.run_mesh_shape(config, model_cfg, 1)
  except PregateError as e:  # refused by the loop's first check, before anything is written
    assert e.exit_code == 2 and "\n" not in str(e)
    return
  tx = step_lib.make_optimizer(config)
  assert np.isfinite(float(step_lib.lr_schedule(config)(0)))
  jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((2, 2), np.float32)})
  b = config.batch
  train = pipeline.open_split(data_dir, "train")
  it = pipeline.make_train_iter(train, global_batch=b.global_batch, seq_len=b.seq_len,
                                seed=config.seed, num_batches=min(config.train_steps, 2))
  next(iter(it))
  pipeline.eval_batches(pipeline.open_split(data_dir, "val"),
                        batch_size=config.eval.batch_size or b.global_batch, seq_len=b.seq_len,
                        n_batches=min(config.eval.eval_batches, 2), seed=config.seed)
  Checkpointer(str(tmp / "ckpt"), keep=config.checkpoint.keep,
               keep_best=config.checkpoint.keep_best,
               async_save=config.checkpoint.async_save).close()


def test_every_field_has_a_rule():
  """Every field of the defaults is fuzzed; only data.sources (a mapping: a mixture's sources,
  which the data spec checks) is not, and the defaults hold it empty."""
  assert set(config_sanity.FIELDS) == set(config_sanity.flatten(base.get_config().to_dict()))
  assert {f.path for f in config_schema.FIELDS} - set(config_sanity.FIELDS) == {"data.sources"}


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory) -> tuple[Path, Path]:
  root = tmp_path_factory.mktemp("fuzz")
  existing = root / "existing"
  existing.mkdir()
  (existing / "notes.txt").write_text("someone's files\n")
  return existing, root / "absent"


@pytest.mark.parametrize("field", sorted(config_sanity.FIELDS))
def test_invalid_value_refused_in_one_line_or_run_starts(field, prepared_data, workdirs,
                                                          tmp_path_factory):
  existing, absent = workdirs
  before = helpers.snapshot(existing)
  counts = {"refused": 0, "accepted": 0}  # per workdir kind

  @settings(max_examples=12, deadline=None, database=None,
            suppress_health_check=list(HealthCheck))
  @given(value=invalid(config_sanity.FIELDS[field]))
  @example(value=None)  # invalid for every field: the refusal path runs whatever is drawn
  def check(value):
    config = _config(prepared_data, field, value)
    for workdir in (existing, absent):
      try:
        plan = preflight(config, str(workdir), force=False)
      except PregateError as e:
        assert e.exit_code in (2, 3), e
        assert str(e).strip() and "Traceback" not in str(e)
        if e.exit_code == 2 and "Chinchilla" not in type(e).__name__:
          assert field.split(".")[-1] in str(e) or "config" in str(e).lower(), str(e)
        counts["refused"] += 1
      else:
        assert plan.model_cfg is not None
        _dry_start(config, prepared_data, tmp_path_factory.mktemp("dry"))
        counts["accepted"] += 1
      assert helpers.snapshot(existing) == before and not absent.exists()

  check()
  assert counts["refused"] >= 2, counts  # None at least, against both workdirs


