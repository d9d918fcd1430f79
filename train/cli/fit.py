"""`pregate-fit WORKDIR... [--out=FIT.json]`: fit your own scaling law to a sweep of pregate runs.

Each run directory gives one point: N and the tokens per step from its gate.json, its final
validation loss and the step it ended at from the last `end` event of its metrics.jsonl (read by
train.report.records, the one reader of that log). D is the tokens the run actually trained on
(step x tokens/step, so an early-stopped run counts what it saw); with unique-token counts
recorded (gate contract >= 1.2.0) the effective tokens D' of those tokens are fitted by default,
as repeated data is worth less (`--tokens=planned` fits D).
The law's constants go to stdout (with bootstrap uncertainty) and to --out for
`pregate-plan --budget_flops=C --fit=FIT.json`.

Exit status: 0 fitted, 2 bad input (a run without the files or a final loss, fewer than 5 runs).
"""
from __future__ import annotations

import json
import pathlib
from fractions import Fraction
from typing import Any

from absl import flags

from core import cli, contracts
from core.errors import ConfigError
from gates import chinchilla_contract, effective, scaling_fit
from train.report import records

FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("out", None, "write the fit as JSON here (for pregate-plan --fit)")
  flags.DEFINE_enum("tokens", "effective", ["effective", "planned"],
                    "fit on the effective tokens D' of what each run trained on, or on D")
  flags.DEFINE_integer("bootstrap", 100, "bootstrap refits for the uncertainty")
  flags.DEFINE_integer("seed", 0, "bootstrap seed")


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: cannot read ({type(e).__name__}: {e}); is it a pregate run "
                      f"directory?") from None


def run_point(workdir: str | pathlib.Path, tokens: str = "effective") -> dict[str, Any]:
  """{workdir, n_params, tokens, loss} of one finished run; ConfigError says what is missing."""
  root = pathlib.Path(workdir)
  gate = _read_json(root / "gate.json")
  ends = [r for r in records.load(str(root), require_metrics=False)
          if r.get("event") == "end" and r.get("val_loss") is not None]
  if not ends:
    raise ConfigError(f"{root}: metrics.jsonl has no finished run with a final val_loss; "
                      f"let the run finish (or drop it from the sweep)")
  end = ends[-1]
  try:
    seen = int(end["step"]) * int(gate["tokens_per_step"])
    d = float(seen)
    if tokens == "effective" and gate.get("sources"):
      r_star = chinchilla_contract.parse(contracts.load(chinchilla_contract.CONTRACT)).r_star
      d = sum(effective.source_interval(seen * Fraction(s["weight"]), int(s["unique_tokens"]),
                                        r_star, 40).midpoint() for s in gate["sources"])
    return {"workdir": str(root), "n_params": int(gate["n_params"]), "tokens": d,
            "loss": float(end["val_loss"])}
  except (KeyError, ValueError, TypeError) as e:
    raise ConfigError(f"{root}: gate.json or metrics.jsonl lacks {e} (written by an older "
                      f"pregate?); re-run it or drop it from the sweep") from None


def main(workdirs: list[str]) -> int:
  points = [run_point(w, FLAGS.tokens) for w in workdirs]
  if len(points) < 5:
    raise ConfigError(f"{len(points)} runs cannot determine 5 constants; sweep at least 5 "
                      f"(N, D) points, e.g. scripts/fit_sweep.sh")
  try:
    result = scaling_fit.fit([p["n_params"] for p in points], [p["tokens"] for p in points],
                             [p["loss"] for p in points], bootstrap=FLAGS.bootstrap,
                             seed=FLAGS.seed)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for p in points:
    print(f"run {p['workdir']}: N = {p['n_params']:,}, {FLAGS.tokens} D = {p['tokens']:,.0f}, "
          f"final val loss {p['loss']:.4f}")
  print("\n".join(result.lines()))
  if FLAGS.out:
    record = {**result.to_dict(), "tokens": FLAGS.tokens, "runs": points}
    pathlib.Path(FLAGS.out).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {FLAGS.out} (use: pregate-plan --config=... --budget_flops=C --fit={FLAGS.out})")
  return 0


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags, positional=("workdir...",),
                  usage="pregate-fit WORKDIR [WORKDIR ...] [--out=FIT.json]")


if __name__ == "__main__":
  run()
