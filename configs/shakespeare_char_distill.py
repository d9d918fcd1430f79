"""Distillation: a student smaller than the default model, taught by the default experiment's
checkpoint (configs/shakespeare_char.py trained into runs/shakespeare_char).

Train the teacher first, then the student (from the repo root):

  python -m train.main --config=configs/shakespeare_char.py --workdir=runs/shakespeare_char
  python -m train.main --config=configs/shakespeare_char_distill.py \\
      --workdir=runs/shakespeare_char_distill

and the same student from scratch, on the same tokens and seed, for comparison:

  python -m train.main --config=configs/shakespeare_char_distill.py \\
      --workdir=runs/shakespeare_char_student --config.distill.teacher=

The student keeps the default's data, batch, schedule and step count (850 steps of 4,096
tokens, D = 3.48M) with a third of its parameters, so the Chinchilla gate v1.2 judges it as any
run: N = 54,048, D'/N = 60.93 >= 20 (`pregate-plan --config=configs/shakespeare_char_distill.py`
also reports the teacher's added forward FLOPs, x1.94 the student's 6ND). Measured: final val
loss 1.8579 distilled (alpha 0.5, temperature 1; teacher 1.7491) vs 1.8918 from scratch;
other settings in docs/benchmarks.md ("Distillation").
"""
from ml_collections import ConfigDict

from configs import shakespeare_char


def get_config(arg: str | None = None) -> ConfigDict:
  del arg
  c = shakespeare_char.get_config()
  c.model.update(d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
  c.distill.update(teacher="runs/shakespeare_char", alpha=0.5, temperature=1.0)
  return c
