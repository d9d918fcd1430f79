"""The evaluation and sampling CLIs on a real (tiny) checkpoint.

The KV-cache path must give the full forward pass's logits, or sampled text silently drifts from
what the model would say; the evaluation CLI must reproduce the loss recorded with a checkpoint,
or its numbers cannot be compared with the training curves.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import helpers

pytestmark = pytest.mark.e2e


FINAL_STEP = 20  # trained_tiny's last step
PROMPT = "First Citizen:\nBefore we proceed"
REF_LEN = 64
N_NEW = 16  # one length for every generate() call: fewer compiles
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


@pytest.fixture(scope="module", autouse=True)
def exact_matmuls():
  """Full float32 matmuls in this process (GPUs default to TF32), so cached and full passes
  agree to 1e-5 and greedy argmaxes do not flip on rounding."""
  import jax
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def workdir(trained_tiny) -> str:
  """The shared 20-step tiny run (tests/conftest.py); its final checkpoint is evaluated (read
  only: evaluation and sampling write nothing into it)."""
  return str(trained_tiny)


@pytest.fixture(scope="module")
def restored(workdir):
  from train.restore import load_for_eval
  return load_for_eval(workdir, FINAL_STEP)


@pytest.fixture(scope="module")
def full_logits(restored):
  """ids -> full-forward logits [len(ids), vocab], jitted once: inputs are right-padded to
  REF_LEN, which causal attention makes invisible to the real positions."""
  import jax
  from flax import nnx
  graphdef, state = nnx.split(restored.model)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))

  def logits(ids) -> np.ndarray:
    padded = np.zeros((1, REF_LEN), np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(forward(state, padded))[0, :len(ids)]
  return logits


@pytest.fixture(scope="module")
def decode(restored):
  """The model's cached decode, jitted (one compile per token-block shape)."""
  import jax
  from flax import nnx
  graphdef, state = nnx.split(restored.model)
  step = jax.jit(lambda state, tokens, caches, index: nnx.merge(graphdef, state).decode(
      tokens, caches=caches, cache_index=index))
  return lambda tokens, caches, index: step(state, tokens, caches, index)


def test_incremental_decode_equals_full_forward_at_every_position(restored, full_logits,
                                                                   decode):
  """A prefill of 8 tokens, then one token at a time into the same cache."""
  ids = restored.tokenizer.encode(TEXT)[:40]
  tokens = np.asarray(ids, np.int32)[None]
  logits, caches = decode(tokens[:, :8], restored.model.init_cache(1, len(ids)), 0)
  steps = [np.asarray(logits[0])]
  for t in range(8, len(ids)):
    logits, caches = decode(tokens[:, t:t + 1], caches, t)
    steps.append(np.asarray(logits[0]))
  np.testing.assert_allclose(np.concatenate(steps), full_logits(ids), atol=1e-5, rtol=0)


def test_greedy_is_deterministic_and_equals_repeated_full_forward_argmax(restored,
                                                                         full_logits):
  from train.infer.generate import generate
  model, tok = restored.model, restored.tokenizer
  text = generate(model, tok, PROMPT, N_NEW, temperature=0.0)
  assert generate(model, tok, PROMPT, N_NEW, temperature=0.0, seed=123) == text
  ids = list(tok.encode(PROMPT))
  for _ in range(N_NEW):
    ids.append(int(np.argmax(full_logits(ids)[-1])))
  assert text == tok.decode(ids[len(tok.encode(PROMPT)):])


def test_seeds(restored):
  from train.infer.generate import generate
  model, tok = restored.model, restored.tokenizer
  a = generate(model, tok, PROMPT, N_NEW, temperature=1.0, seed=0)
  assert len(a) == N_NEW
  assert generate(model, tok, PROMPT, N_NEW, temperature=1.0, seed=0) == a
  others = {generate(model, tok, PROMPT, N_NEW, temperature=1.0, seed=s) for s in (1, 2, 3)}
  assert others - {a}, "different seeds gave the same text"


def test_top_k_1_is_greedy(restored):
  from train.infer.generate import generate
  model, tok = restored.model, restored.tokenizer
  greedy = generate(model, tok, PROMPT, N_NEW, temperature=0.0)
  assert generate(model, tok, PROMPT, N_NEW, temperature=1.0, top_k=1, seed=7) == greedy


def test_generation_past_max_seq_len_slides_the_window(workdir):
  """prompt + new tokens > max_seq_len=128 is generated (tests/test_sample_window.py checks it
  against the full forward)."""
  res = helpers.command("train.cli.sample", f"--checkpoint={workdir}", f"--prompt={PROMPT}",
             "--max_new_tokens=120")
  assert res.rc == 0, res.stderr[-3000:]
  assert res.stdout == PROMPT + res.stdout[len(PROMPT):] and len(res.stdout) == len(PROMPT) + 121


def test_evaluate_cli_reproduces_recorded_val_loss(workdir):
  recorded = helpers.checkpoint_meta(workdir, FINAL_STEP)["val_loss"]
  assert recorded is not None, "the final checkpoint recorded no val_loss"
  res = helpers.command("train.cli.evaluate", f"--checkpoint={workdir}", f"--step={FINAL_STEP}")
  assert res.rc == 0, res.stderr[-3000:]
  lines = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
  assert len(lines) == 1, res.stdout
  result = json.loads(lines[0][len("RESULT "):])
  assert result["step"] == FINAL_STEP and result["recorded_val_loss"] == recorded
  assert abs(result["loss"] - recorded) <= 1e-5 * abs(recorded)
  assert result["bits_per_char"] == pytest.approx(result["loss"] / math.log(2), rel=1e-6)
  assert result["bits_per_token"] == pytest.approx(result["loss"] / math.log(2), rel=1e-12)
  assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-12)
  assert "perplexity" in res.stdout and "recorded" in res.stdout


def test_evaluate_text_file_scores_every_token(workdir, restored, full_logits, tmp_path):
  """Non-overlapping 32-token windows plus the short tail, each target scored once."""
  import optax

  from train.infer.score import evaluate_checkpoint
  path = tmp_path / "text.txt"
  path.write_text(TEXT)
  result = evaluate_checkpoint(workdir, FINAL_STEP, data=str(path))
  ids = restored.tokenizer.encode(TEXT)
  assert result["tokens"] == len(ids) - 1 and result["seq_len"] == 32
  nats = []
  for start in range(0, len(ids) - 1, 32):
    window = ids[start:start + 33]
    logits = full_logits(window[:-1])
    nats.append(optax.softmax_cross_entropy_with_integer_labels(logits, window[1:]))
  expected = float(np.mean(np.concatenate(nats)))
  assert result["loss"] == pytest.approx(expected, rel=1e-5)
  assert result["bits_per_char"] == pytest.approx(expected / math.log(2), rel=1e-5)


def test_evaluate_text_outside_vocabulary_is_one_line_error(workdir, tmp_path):
  path = tmp_path / "accents.txt"
  path.write_text("Café au lait\n", encoding="utf-8")
  res = helpers.command("train.cli.evaluate", f"--checkpoint={workdir}", f"--data={path}")
  helpers.assert_one_line_error(res, "DataError", "'é'")
