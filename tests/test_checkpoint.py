"""train.ckpt.checkpointer.Checkpointer in-process: an exact round trip (params, optimizer state,
data position), retention that never deletes the newest save (the orbax trap in
docs/stack-facts.md), step resolution, and the stored array signature the architecture check
relies on."""
import jax
import numpy as np
import pytest

import helpers
from core.errors import CheckpointError
from models.config import ModelConfig
from models.params import abstract_model, param_shapes
from train.ckpt.checkpointer import Checkpointer
from train.ckpt.metadata import Metadata
from train.data import pipeline as data_lib
from train.state import sharding
from train.state import step as step_lib
from train.state.setup import TrainSetup


def _iter(train_arr, config):
  return data_lib.make_train_iter(
      train_arr, global_batch=config.batch.global_batch, seq_len=config.batch.seq_len,
      seed=config.seed, num_batches=config.train_steps)


@pytest.fixture(scope="module")
def trained(prepared_data):
  """A TINY model on a 1-device mesh after two real train steps (so Adam moments are non-zero
  and the iterator has moved)."""
  config = helpers.tiny_config(prepared_data)
  model_cfg = ModelConfig.from_dict(config.model.to_dict())
  tx = step_lib.make_optimizer(config)
  mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
  setup = TrainSetup.build(model_cfg, tx, config.seed, mesh)
  train_arr = data_lib.open_split(prepared_data, "train")
  it = _iter(train_arr, config)
  step = jax.jit(step_lib.make_train_step(setup.graphdef, tx, step_lib.lr_schedule(config)))
  state = setup.fresh_state()
  for _ in range(2):
    state, _ = step(state, next(it))
  return dict(config=config, model_cfg=model_cfg, setup=setup, state=state, it=it,
              train_arr=train_arr)


def _assert_bitwise_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  got, want = helpers.flat(got), helpers.flat(want)
  assert got.keys() == want.keys()
  for path in want:
    a, b = np.asarray(got[path]), np.asarray(want[path])
    assert a.dtype == b.dtype and a.shape == b.shape, path
    assert np.array_equal(a, b), f"{path} differs after restore"


def test_round_trip_is_bit_identical(trained, tmp_path):
  state, it, setup = trained["state"], trained["it"], trained["setup"]
  assert int(state.step) == 2
  saved_data_state = it.get_state()
  ckpt = Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(2, state.params, state.opt_state, it,
            Metadata.from_json({"step": 2, "note": "round trip"}), 3.5)
  ckpt.close()
  next_batch = next(it)  # what a resumed run must see next

  reader = Checkpointer(str(tmp_path / "ckpt"), read_only=True)
  params_t, opt_t = setup.targets()
  fresh_it = _iter(trained["train_arr"], trained["config"])
  got = reader.restore(2, params_target=params_t, opt_target=opt_t, data_iter=fresh_it)
  meta = reader.read_meta(2)
  reader.close()

  _assert_bitwise_equal(got["params"], state.params)
  _assert_bitwise_equal(got["opt_state"], state.opt_state)
  assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(got["opt_state"]))
  assert fresh_it.get_state() == saved_data_state
  restored_batch = next(fresh_it)
  for k in ("inputs", "targets"):
    assert np.array_equal(restored_batch[k], next_batch[k])
  assert meta.to_json() == {"step": 2, "note": "round trip"}


def test_array_signature_matches_abstract_model(trained, tmp_path):
  state = trained["state"]
  ckpt = Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  ckpt.save(2, state.params, state.opt_state, None, Metadata.from_json({"step": 2}))
  ckpt.wait()
  found = ckpt.array_signature(2)
  ckpt.close()
  expected = param_shapes(abstract_model(trained["model_cfg"]))
  assert expected and found == expected
  assert found == trained["setup"].expected_signature()
  cfg = trained["model_cfg"]
  assert found["embed"] == ((cfg.vocab_size, cfg.d_model), "float32")
  assert found["blocks/0/attn/wk/kernel"][0] == (cfg.d_model, cfg.n_kv_heads * cfg.head_dim)


def _tiny_save(ckpt, step, val_loss):
  params = {"w": np.full((3,), step, np.float32)}
  ckpt.save(step, params, {"m": np.zeros((3,), np.float32)}, None,
            Metadata.from_json({"step": step}), val_loss)


def test_retention_keeps_newest_and_best(tmp_path):
  """keep=2, keep_best=1: the two newest plus the best; the newest is never deleted even when
  it is not among the best (plain best_fn + max_to_keep would leave [1, 2] here)."""
  losses = {1: 4.0, 2: 1.0, 3: 3.0, 4: 2.5, 5: 2.0, 6: 1.5}
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2, keep_best=1)
  for step, loss in losses.items():
    _tiny_save(ckpt, step, loss)
  ckpt.wait()
  assert ckpt.steps() == [2, 5, 6]
  assert ckpt.latest_step() == 6 and ckpt.best_step() == 2
  # A final save without a val loss (a preempted run's) is still kept as the newest.
  _tiny_save(ckpt, 7, None)
  ckpt.close()
  assert helpers.checkpoint_steps(tmp_path) == [2, 6, 7]

  # A resumed run reopens the directory: the best save's val loss must survive that, or the
  # next save would delete step 2 as a checkpoint "without metrics".
  reopened = Checkpointer(str(tmp_path / "checkpoints"), keep=2, keep_best=1)
  assert reopened.steps() == [2, 6, 7]
  assert reopened.latest_step() == 7 and reopened.best_step() == 2
  _tiny_save(reopened, 8, 3.0)
  reopened.close()
  assert helpers.checkpoint_steps(tmp_path) == [2, 7, 8]


def test_resolve_best_latest_and_missing(tmp_path):
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2, keep_best=1)
  for step, loss in {1: 4.0, 2: 1.0, 3: 3.0, 4: 2.5, 5: 2.0, 6: 1.5}.items():
    _tiny_save(ckpt, step, loss)
  ckpt.wait()
  assert ckpt.resolve("best") == 2
  assert ckpt.resolve("latest") == 6
  assert ckpt.resolve(5) == 5 and ckpt.resolve("5") == 5
  for missing in (3, "3", 99):
    with pytest.raises(CheckpointError, match=r"available: \[2, 5, 6\]"):
      ckpt.resolve(missing)
  with pytest.raises(CheckpointError, match="not found"):
    ckpt.resolve("newest")
  ckpt.close()
  empty = Checkpointer(str(tmp_path / "empty"))
  with pytest.raises(CheckpointError, match="no checkpoints"):
    empty.resolve("latest")
  empty.close()


def test_background_read_errors_are_quiet_and_nothing_else_is(monkeypatch, capsys):
  """Once arrays are read, a failed shard read reported again by a library thread (through
  sys.excepthook, threading.excepthook or an unraisable exception) prints nothing; the same
  error on the main thread, and any other error on any thread, still prints."""
  import sys
  import threading

  from train.ckpt import checkpointer
  monkeypatch.setattr(checkpointer, "_quieted", False)
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
  monkeypatch.setattr(threading, "excepthook", threading.excepthook)
  monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: print(f"printed {value}"))
  checkpointer.quiet_background_read_errors()
  closed, other = RuntimeError("Event loop is closed"), ValueError("a real bug")

  def from_library_thread(error):
    t = threading.Thread(target=lambda: sys.excepthook(type(error), error, None))
    t.start()
    t.join()

  from_library_thread(closed)
  from_library_thread(other)
  sys.excepthook(RuntimeError, closed, None)
  assert capsys.readouterr().out.splitlines() == ["printed a real bug",
                                                  "printed Event loop is closed"]
