"""The wall-time forecast: event counts follow the training loop's schedule exactly (checked
against a step-by-step replay of train/run/loop.py's conditions), and the sum is the formula."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import shakespeare_char
from gates import forecast


def _replay(train_steps: int, eval_every: int, save_every: int, start: int) -> tuple[int, int]:
  """(evals, saves) of the loop's while-body conditions, step by step (no early stop)."""
  evals = saves = 0
  for step in range(start + 1, train_steps + 1):
    is_eval = step % eval_every == 0 or step == train_steps
    evals += is_eval
    if step % save_every == 0 and step < train_steps:
      saves += 1
      evals += not is_eval  # save() evaluates when the step had no eval
  return evals, saves + (train_steps > start)  # the final save


@settings(deadline=None, max_examples=300)
@given(steps=st.integers(1, 3000), eval_every=st.integers(1, 500),
       save_every=st.integers(1, 500), data=st.data())
def test_schedule_counts_match_the_loop(steps, eval_every, save_every, data):
  start = data.draw(st.integers(0, steps))
  s = forecast.schedule(steps, eval_every, save_every, start)
  assert (s.evals, s.saves) == _replay(steps, eval_every, save_every, start)
  assert s.steps == steps - start


def test_default_experiment_forecast_adds_up():
  c = shakespeare_char.get_config()
  s = forecast.schedule(c.train_steps, c.eval.eval_every, c.checkpoint.save_every)
  assert (s.steps, s.evals, s.saves) == (850, 6, 2)  # the save at 425 evaluates too
  f = forecast.forecast(s, step_s=0.02, eval_s=0.5, save_s=0.3, compile_s=12.0, startup_s=3.0)
  assert f.total_s == pytest.approx(3.0 + 12.0 + 850 * 0.02 + 6 * 0.5 + 2 * 0.3)
  assert f.line().startswith(f"forecast: {f.total_s:.1f} s") and "850 steps" in f.line()
  assert f.to_dict()["total_s"] == f.total_s


@pytest.mark.parametrize("args", [(0, 1, 1), (10, 0, 1), (10, 1, -2), (True, 1, 1)])
def test_schedule_rejects_impossible_inputs(args):
  with pytest.raises(ValueError):
    forecast.schedule(*args)


def test_forecast_rejects_negative_costs():
  with pytest.raises(ValueError, match="eval_s"):
    forecast.forecast(forecast.schedule(10, 5, 5), step_s=0.1, eval_s=-1, save_s=0,
                      compile_s=0)
