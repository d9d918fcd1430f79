"""pregate-stamp proves itself: a wrong rope_theta or head split (every shape unchanged) is
refused and nothing is written; the right config stamps, records a fingerprint verified on
held-out text, and the stamped checkpoint then passes the load matrix.

The checkpoint is the default model after 200 steps at half its batch (held-out loss 2.228,
ln V = 4.174), trained enough that attention and positions matter: run as another head split
its held-out loss rises to 2.74–2.85, with rope_theta 500000 to 2.330, each far more than the
0.02 nats a same-shape alternative must win by (gates.arch_match.BETTER_BY). A near-untrained
model (loss at the random level ln V) cannot be told from a scrambled one, and is refused.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import helpers
from gates import arch_match
from train.ckpt.metadata import Metadata
from train.restore import load_for_eval

pytestmark = pytest.mark.e2e


STEPS = 200
RUN = [f"--config.train_steps={STEPS}", "--config.eval.eval_every=200",
       "--config.eval.eval_batches=4", "--config.logging.log_every=100",
       "--config.checkpoint.save_every=200", "--config.batch.global_batch=16",
       "--config.eval.tasks="]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_data) -> Path:
  work = tmp_path_factory.mktemp("stamp") / "run"
  r = helpers.run_main(helpers.FORCE, *RUN, f"--config.data.data_dir={prepared_data}",
                       workdir=work, timeout=1500, env=helpers.optimised())
  assert r.rc == 0, r.stderr[-3000:]
  return work


@pytest.fixture
def salvage(trained, tmp_path) -> Path:
  """A copy whose metadata was lost: what pregate-stamp exists for."""
  work = Path(shutil.copytree(trained, tmp_path / "run"))
  os.remove(work / "checkpoints" / str(STEPS) / "meta" / "metadata")
  return work


def _stamp(work: Path, *extra: str) -> helpers.Result:
  return helpers.command("train.cli.stamp", work, f"--config={helpers.CONFIG}", *RUN, *extra,
                         timeout=1500)


def _recorded_loss(trained: Path) -> float:
  return helpers.checkpoint_meta(trained, STEPS)["val_loss"]


def test_stamp_with_wrong_rope_theta_is_refused(salvage):
  """No loss stated: the same-shape alternatives expose it (rope_theta 10000 scores better)."""
  before = helpers.snapshot(salvage)
  res = _stamp(salvage, "--config.model.rope_theta=500000.0")
  helpers.assert_one_line_error(res, "ArchitectureMismatchError", "model.rope_theta=10000")
  assert helpers.snapshot(salvage) == before


def test_stamp_with_wrong_head_split_is_refused(trained, salvage):
  """n_heads/n_kv_heads 8/4 instead of 4/2 keeps every shape; the stated loss exposes it."""
  before = helpers.snapshot(salvage)
  res = _stamp(salvage, "--config.model.n_heads=8", "--config.model.n_kv_heads=4",
               f"--expect_loss={_recorded_loss(trained)}", "--nocheck_alternatives")
  helpers.assert_one_line_error(res, "ArchitectureMismatchError", "far from the stated")
  assert helpers.snapshot(salvage) == before


def test_stamp_with_right_config_passes_the_matrix(trained, salvage, tmp_path):
  res = _stamp(salvage, f"--expect_loss={_recorded_loss(trained)}")
  assert res.rc == 0, res.stdout + res.stderr[-3000:]
  assert "verified: held-out loss" in res.stdout and "no same-shape alternative" in res.stdout
  meta = helpers.checkpoint_meta(salvage, STEPS)
  fp = meta["fingerprint"]
  assert fp["by"] == "stamp" and fp["verified"]["loss"] < 0.6 * fp["verified"]["random_loss"]
  from train.cli import inspect_ckpt
  q = json.loads(inspect_ckpt.report(str(salvage), as_json=True, with_quality=True))["quality"]
  assert q["fingerprint"]["verified"] and q["fingerprint"]["by"] == "stamp", q["fingerprint"]
  assert q["fingerprint"]["recomputed"].startswith("matches"), q["fingerprint"]
  # The matrix on the stamped checkpoint: each edited non-shape field is refused on load...
  for edit in ({"rope_theta": 500000.0}, {"norm_eps": 1e-3}, {"dtype": "bfloat16"},
               {"n_heads": 8, "n_kv_heads": 4}):
    work = Path(shutil.copytree(salvage, tmp_path / f"edit-{'-'.join(edit)}"))
    path = work / "checkpoints" / str(STEPS) / "meta" / "metadata"
    edited = json.loads(path.read_text())
    edited["model"].update(edit)
    path.write_text(json.dumps(edited))
    before = helpers.snapshot(work)
    with pytest.raises(arch_match.FingerprintMismatchError):
      load_for_eval(str(work))
    assert helpers.snapshot(work) == before
  # ...and the unedited one loads on 1 device here and 2 in pregate-eval.
  assert load_for_eval(str(salvage)).step == STEPS
  proc = helpers.run_module("train.cli.evaluate", f"--checkpoint={salvage}",
                            f"--data={helpers.CORPUS}", "--batches=2", timeout=600,
                            env=helpers.fake_devices(2))
  assert proc.returncode == 0 and "fingerprint" not in proc.stderr, proc.stderr[-3000:]


def test_stamp_of_an_untrained_model_is_refused(tmp_path):
  """Loss at the random level cannot prove any architecture: refused, nothing written."""
  import jax
  import numpy as np

  from configs import shakespeare_char
  from models.config import ModelConfig
  from train.ckpt import stamp
  from train.ckpt.checkpointer import Checkpointer
  from train.state import sharding
  from train.state import step as step_lib
  from train.state.setup import TrainSetup
  config = shakespeare_char.get_config()
  cfg = ModelConfig.from_dict(config.model.to_dict())
  setup = TrainSetup.build(cfg, step_lib.make_optimizer(config), 0,
                           sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=1, keep_best=0, async_save=False)
  ckpt.save(5, setup.fresh_state().params, {"unused": np.zeros(1)}, None,
            Metadata.from_json({"note": "none"}))
  ckpt.close()
  before = helpers.snapshot(tmp_path)
  with pytest.raises(arch_match.ArchitectureMismatchError, match="near the random level"):
    stamp.stamp(str(tmp_path), config, check_alternatives=False)
  assert helpers.snapshot(tmp_path) == before
