"""`pregate-fit`: Hoffmann et al.'s L(N, D) fit recovers known constants from synthetic losses,
reads N, D and the final loss from run directories, and feeds the adviser."""
import json
import pathlib

import numpy as np
import pytest

from gates import scaling_fit
from gates.adviser import Law

TRUE = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al.'s Approach 3


def _grid(law: Law, noise: float = 0.0, seed: int = 0):
  rng = np.random.default_rng(seed)
  n, d = np.meshgrid(np.geomspace(1e6, 1e9, 6), [5.0, 20.0, 80.0])
  n, d = n.ravel(), (n * d).ravel()
  loss = np.array([law.loss(a, b) for a, b in zip(n, d)]) * np.exp(rng.normal(0, noise, n.size))
  return n, d, loss


def test_synthetic_losses_recover_the_constants_within_5_percent():
  result = scaling_fit.fit(*_grid(TRUE), bootstrap=3)
  for name, value in vars(TRUE).items():
    assert getattr(result.law, name) == pytest.approx(value, rel=0.05), name
  assert result.n_points == 18 and all(np.isfinite(list(result.std.values())))


def test_fit_is_robust_to_small_noise_and_reports_uncertainty():
  result = scaling_fit.fit(*_grid(TRUE, noise=0.002), bootstrap=8)
  for name, value in vars(TRUE).items():
    assert getattr(result.law, name) == pytest.approx(value, rel=0.10), name
    assert result.low[name] <= result.high[name]
  assert result.std["E"] > 0
  text = "\n".join(result.lines())
  assert "alpha" in text and "+-" in text and "8 bootstrap" in text


@pytest.mark.parametrize("points", [([1e6] * 4, [1e7] * 4, [3.0] * 4),
                                    ([1e6] * 5, [1e7] * 5, [3.0, 3.0, -1.0, 3.0, 3.0])])
def test_too_few_or_bad_points_are_refused(points):
  with pytest.raises(ValueError):
    scaling_fit.fit(*points, bootstrap=0)


def _fake_run(root: pathlib.Path, n: int, steps: int, per_step: int, loss: float,
              unique: int) -> None:
  """The two files a finished pregate run leaves that pregate-fit reads (as the loop writes
  them: gate.json = the verdict dict; metrics.jsonl ending with the `end` event)."""
  root.mkdir(parents=True)
  gate = {"n_params": n, "tokens_per_step": per_step, "tokens": steps * per_step,
          "sources": [{"name": "c", "weight": "1", "unique_tokens": unique}]}
  (root / "gate.json").write_text(json.dumps(gate))
  records = [{"event": "gate", **gate}, {"event": "eval", "step": steps, "val_loss": loss},
             {"event": "end", "step": steps, "termination": "COMPLETED", "val_loss": loss}]
  (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_effective_tokens_are_fitted_for_repeated_runs(tmp_path):
  from train.cli import fit as fit_cli
  _fake_run(tmp_path / "r", 1000, 100, 100, 3.0, 2_500)  # D = 10,000 = 4 epochs of 2,500
  point = fit_cli.run_point(tmp_path / "r")
  assert point["tokens"] == pytest.approx(2_500 * 3.72588, rel=1e-5)
  assert fit_cli.run_point(tmp_path / "r", tokens="planned")["tokens"] == 10_000
