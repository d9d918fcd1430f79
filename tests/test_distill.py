"""Distillation's pieces in-process: the KL term equals NumPy's KL(softmax(t/τ) ‖ softmax(s/τ))·τ²
and its gradient moves the student toward the teacher; alpha = 0 is the ordinary step bit for
bit; the loss mixes its terms as stated; the config rules, ownership kinds, teacher identity
comparison and the planner's teacher FLOPs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base, shakespeare_char, shakespeare_char_distill
from gates import config_sanity, ownership
from models.config import ModelConfig
from models.loss import cross_entropy, distill_kl
from models.params import count_params
from models.transformer import Transformer
from train.ckpt.metadata import Metadata
from train.cli import plan as plan_mod
from train.run import teacher as teacher_lib
from train.state import distill as distill_lib
from train.state import step as step_lib

pytestmark = pytest.mark.slow


VOCAB, SEQ, BATCH = 65, 16, 4
STUDENT = dict(vocab_size=VOCAB, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
               max_seq_len=SEQ)
TEACHER = dict(STUDENT, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96)


def _np_kl(s, t, tau):
  """KL(softmax(t/τ) ‖ softmax(s/τ))·τ², averaged over positions, in float64."""
  def log_softmax(x):
    x = x / tau
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
  lt, ls = log_softmax(t.astype(np.float64)), log_softmax(s.astype(np.float64))
  return float(np.mean(np.sum(np.exp(lt) * (lt - ls), -1)) * tau * tau)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0, 4.0])
def test_kl_matches_numpy(tau):
  rng = np.random.default_rng(int(tau * 10))
  s = rng.normal(0, 3, (3, 7, VOCAB)).astype(np.float32)
  t = rng.normal(0, 3, (3, 7, VOCAB)).astype(np.float32)
  got = float(distill_kl(jnp.asarray(s), jnp.asarray(t), tau))
  want = _np_kl(s, t, tau)
  assert abs(got - want) <= 1e-5 * max(1.0, abs(want)), (got, want)
  assert float(distill_kl(jnp.asarray(t), jnp.asarray(t), tau)) == pytest.approx(0, abs=1e-6)


def test_kl_gradient_is_the_move_toward_the_teacher():
  """d KL / d s = τ (softmax(s/τ) - softmax(t/τ)) / positions: descending it raises the
  student's probabilities where the teacher's are higher."""
  tau, rng = 2.0, np.random.default_rng(0)
  s, t = (jnp.asarray(rng.normal(0, 2, (2, 5, VOCAB)), jnp.float32) for _ in range(2))
  grad = jax.grad(distill_kl)(s, t, tau)
  want = tau * (jax.nn.softmax(s / tau) - jax.nn.softmax(t / tau)) / 10
  np.testing.assert_allclose(np.asarray(grad), np.asarray(want), atol=1e-7)


def _models(seed_s=0, seed_t=1):
  with nnx.use_eager_sharding(False):
    student = Transformer(ModelConfig(**STUDENT), rngs=nnx.Rngs(seed_s))
    teacher = Transformer(ModelConfig(**TEACHER), rngs=nnx.Rngs(seed_t))
  return student, teacher


def _batch(seed=0):
  toks = np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQ + 1))
  return {"inputs": jnp.asarray(toks[:, :-1], jnp.int32),
          "targets": jnp.asarray(toks[:, 1:], jnp.int32)}


def test_kl_gradient_moves_the_student_logits_toward_the_teachers():
  """On a fixed batch, SGD steps on the student's parameters down the KL's gradient (alpha = 1)
  lower the KL and bring the student's log-probabilities closer to a different teacher's."""
  student, teacher = _models()
  graphdef, params = nnx.split(student)
  params = nnx.to_pure_dict(params)
  t_graphdef, t_params = nnx.split(teacher)
  t_params = nnx.to_pure_dict(t_params)
  distill = distill_lib.Distill(t_graphdef, alpha=1.0, temperature=2.0)
  loss_fn = distill_lib.make_loss_fn(graphdef, distill)
  batch = _batch()
  t_logp = jax.nn.log_softmax(teacher(batch["inputs"]))

  def distance(p):
    s_logp = jax.nn.log_softmax(nnx.merge(graphdef, p)(batch["inputs"]))
    return float(jnp.mean(jnp.abs(s_logp - t_logp)))

  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (kl0, aux), _ = grad_fn(params, batch, t_params)
  assert float(kl0) == pytest.approx(float(aux["kl"]))  # alpha 1: the loss is the KL alone
  d0, p = distance(params), params
  for _ in range(20):
    (_, _), g = grad_fn(p, batch, t_params)
    p = jax.tree.map(lambda x, gx: x - 0.5 * gx, p, g)
  (kl1, _), _ = grad_fn(p, batch, t_params)
  assert float(kl1) < 0.8 * float(kl0), (float(kl0), float(kl1))
  assert distance(p) < d0


def test_loss_mixes_cross_entropy_and_kl():
  student, teacher = _models()
  graphdef, params = nnx.split(student)
  t_graphdef, t_params = nnx.split(teacher)
  batch, alpha, tau = _batch(1), 0.3, 1.5
  loss, aux = distill_lib.make_loss_fn(graphdef, distill_lib.Distill(t_graphdef, alpha, tau))(
      nnx.to_pure_dict(params), batch, nnx.to_pure_dict(t_params))
  s_logits, t_logits = student(batch["inputs"]), teacher(batch["inputs"])
  ce = float(cross_entropy(s_logits, batch["targets"]))
  kl = _np_kl(np.asarray(s_logits), np.asarray(t_logits), tau)
  assert float(aux["ce"]) == pytest.approx(ce, rel=1e-6)
  assert float(aux["kl"]) == pytest.approx(kl, rel=1e-5, abs=1e-6)
  assert float(loss) == pytest.approx((1 - alpha) * ce + alpha * kl, rel=1e-5)


def _config():
  c = base.get_config()
  c.model.update(**STUDENT)
  c.optimizer.update(lr=1e-2)
  c.schedule.update(warmup_steps=2)
  return c


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_alpha_zero_is_the_ordinary_step_bit_for_bit(grad_accum):
  """With a teacher bound and alpha = 0 the step is ordinary training: after 3 steps params,
  optimizer state and losses are bitwise those of the step without a teacher; alpha > 0 is not,
  and its metrics carry the ce and kl terms."""
  c = _config()
  tx = step_lib.make_optimizer(c)
  graphdef, init = step_lib.init_fn(ModelConfig(**STUDENT), tx, 0)
  t_graphdef, t_params = nnx.split(_models()[1])
  t_params = nnx.to_pure_dict(t_params)
  sched = step_lib.lr_schedule(c)

  def run(distill):
    step = jax.jit(step_lib.make_train_step(graphdef, tx, sched, grad_accum, distill=distill))
    state, losses = jax.jit(init)(), []
    for i in range(3):
      args = (state, _batch(i)) + (() if distill is None else (t_params,))
      state, m = step(*args)
      losses.append(float(m["loss"]))
    return jax.tree.map(np.asarray, (state.params, state.opt_state)), losses, m

  plain, plain_losses, plain_m = run(None)
  zero, zero_losses, zero_m = run(distill_lib.Distill(t_graphdef, 0.0, 2.0))
  assert zero_losses == plain_losses and "kl" not in zero_m and "kl" not in plain_m
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(zero)):
    np.testing.assert_array_equal(a, b)
  half, half_losses, half_m = run(distill_lib.Distill(t_graphdef, 0.5, 2.0))
  assert half_losses != plain_losses and {"ce", "kl"} <= set(half_m)
  assert float(half_m["loss"]) == pytest.approx(
      0.5 * float(half_m["ce"]) + 0.5 * float(half_m["kl"]), rel=1e-5)
  assert not np.array_equal(jax.tree.leaves(half)[0], jax.tree.leaves(plain)[0])


@pytest.mark.parametrize("field, value", [("distill.alpha", 1.5), ("distill.alpha", -0.1),
                                          ("distill.temperature", 0.0),
                                          ("distill.temperature", math.nan),
                                          ("distill.teacher", 3)])
def test_config_rules_refuse(field, value):
  cfg = base.get_config().to_dict()
  cfg["distill"][field.split(".")[1]] = value
  assert any(field in p for p in config_sanity.problems(cfg))


def test_ownership_kinds():
  """The loss's weights are schedule (opt-in on resume); the teacher's spelling is safe: the
  teacher itself is compared by content (test_distill_run's resume tests)."""
  old = base.get_config().to_dict()
  new = base.get_config().to_dict()
  new["distill"].update(alpha=0.9, teacher="runs/x:100")
  diff = ownership.classify(old, new)
  assert [d.split(":")[0] for d in diff["schedule"]] == ["distill.alpha"]
  assert [d.split(":")[0] for d in diff["safe"]] == ["distill.teacher"]
  assert not diff["identity"]


def _record(**over):
  teacher = {"spec": "runs/t", "path": "/r/runs/t/checkpoints", "step": 20,
             "model": ModelConfig(**TEACHER).to_dict(), "fingerprint_sha256": "a" * 64,
             "tokenizer_fingerprint": "b" * 64, **over}
  return {"teacher": teacher, "alpha": 0.5, "temperature": 1.0}


def test_teacher_identity_is_by_content():
  same = _record(spec="/abs/runs/t:20", path="/elsewhere/checkpoints")
  assert teacher_lib.differences(_record(), same) == []
  assert teacher_lib.differences(None, None) == []
  moved = teacher_lib.differences(_record(), _record(step=30, fingerprint_sha256="c" * 64))
  assert moved[0] == "teacher step 20 -> 30" and "functional fingerprint" in moved[1]
  other = teacher_lib.differences(_record(), _record(model=ModelConfig(**STUDENT).to_dict()))
  assert any("model.d_model: expected 48 found 32" in d for d in other)
  assert "without a teacher" in teacher_lib.differences(None, _record())[0]
  assert "now without one" in teacher_lib.differences(_record(), None)[0]
  with pytest.raises(teacher_lib.TeacherError, match="trained with another teacher"):
    teacher_lib.check_resumed("checkpoint x/5", Metadata.from_json({"distill": _record()}),
                              _record(step=5))
  # pre-distill metadata
  teacher_lib.check_resumed("checkpoint x/5", Metadata.from_json({"model": {}}), None)


def test_planner_adds_the_teachers_forward_flops():
  config = shakespeare_char_distill.get_config()
  teacher_model = shakespeare_char.get_config().model.to_dict()
  lines, verdict = plan_mod.plan(config, tokens_per_sec=1e4, teacher_model=teacher_model)
  n = count_params(ModelConfig.from_dict(config.model.to_dict())).total
  n_t = count_params(ModelConfig.from_dict(teacher_model)).total
  assert n < n_t  # a student smaller than the default model
  d = config.train_steps * config.batch.global_batch * config.batch.seq_len
  factor = (6 * n + 2 * n_t) / (6 * n)
  [line] = [x for x in lines if x.startswith("distill:")]
  assert f"N_t = {n_t:,}" in line and f"{2 * n_t * d:.3e}" in line and f"x{factor:.2f}" in line
  [time_line] = [x for x in lines if x.startswith("time:")]
  assert plan_mod.human_duration(d * factor / 1e4) in time_line
  assert verdict.passed and not verdict.bypassed  # the student passes the gate on its own
  config.distill.alpha = 0.0
  lines, _ = plan_mod.plan(config, tokens_per_sec=1e4, teacher_model=teacher_model)
  assert any("alpha = 0" in x for x in lines)
  assert plan_mod.human_duration(d / 1e4) in [x for x in lines if x.startswith("time:")][0]


def test_forward_flops_are_a_third_of_training_flops():
  from train.state import flops
  cfg = ModelConfig(**TEACHER)
  n = count_params(cfg).total
  assert flops.forward_flops_per_token(cfg, n, SEQ) * 3 == pytest.approx(
      flops.flops_per_token(cfg, n, SEQ))


def test_missing_teacher_names_the_command_that_trains_it():
  """The distill experiment's teacher is the default experiment's workdir: when it is absent,
  the refusal says how to train it (a config named like the workdir exists)."""
  spec = "no_such_runs_dir/shakespeare_char"
  with pytest.raises(teacher_lib.TeacherError) as e:
    teacher_lib.check_files(spec, ModelConfig(**STUDENT), SEQ, lambda: None, "/nonexistent")
  assert ("python -m train.main --config=configs/shakespeare_char.py "
          "--workdir=no_such_runs_dir/shakespeare_char") in str(e.value)
  assert shakespeare_char_distill.get_config().distill.teacher == "runs/shakespeare_char"
