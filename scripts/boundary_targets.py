"""What a trained model does with the target that crosses a document boundary.

`PYTHONPATH=$PWD python scripts/boundary_targets.py WORKDIR [WORKDIR ...]`

In a packed window the end-of-text token ends one document and its target is the next
document's first token. For each run's final checkpoint (restored and verified like any
evaluation), its recorded eval batches are redrawn (with the run's segments when it masked) and
the per-target loss is split into crossing targets (input = end-of-text) and the rest. Beside
them: ln V (a uniform guess) and the entropy of the first-token distribution of the eval
windows' documents (the best a model can do there without seeing the next document). A crossing
loss near that entropy means the model learned what begins a document, which is what it is
asked after an end-of-text at generation time; that is why the target is kept.
"""
from __future__ import annotations

import math
import sys

import numpy as np


def main(workdirs: list[str]) -> None:
  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from models.transformer import packed
  from train.ckpt.restore import load_for_eval
  from train.ckpt.stepspec import checkpoint_dir
  from train.data import pipeline
  from train.infer.score import val_dir

  for workdir in workdirs:
    restored = load_for_eval(workdir)
    meta, model, eos = restored.meta, restored.model, restored.tokenizer.eos_id
    split = pipeline.open_split(val_dir(meta, checkpoint_dir(workdir)), "val")
    batches = pipeline.reproduce_eval_batches(split, meta.eval_batches)
    graphdef, state = nnx.split(model)
    nats = jax.jit(lambda state, b, g=graphdef: optax.softmax_cross_entropy_with_integer_labels(
        nnx.merge(g, state)(b["inputs"], **packed(b)).astype(jnp.float32), b["targets"]))
    per = np.concatenate([np.asarray(nats(state, b)).ravel() for b in batches])
    inputs = np.concatenate([b["inputs"].ravel() for b in batches])
    targets = np.concatenate([b["targets"].ravel() for b in batches])
    crossing = inputs == eos
    firsts = np.bincount(targets[crossing]).astype(np.float64)
    p = firsts[firsts > 0] / firsts.sum()
    print(f"{workdir}: packing {meta.document_packing.to_json()}; val loss {per.mean():.4f} "
          f"over {per.size:,} targets; crossing targets ({crossing.sum():,}, "
          f"{100 * crossing.mean():.2f}%) {per[crossing].mean():.4f} nats; the rest "
          f"{per[~crossing].mean():.4f}; ln V {math.log(model.cfg.vocab_size):.4f}; "
          f"first-token entropy {-(p * np.log(p)).sum():.4f}")


if __name__ == "__main__":
  main(sys.argv[1:])
