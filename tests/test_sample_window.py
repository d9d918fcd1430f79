"""Sampling past the context: a sliding window over the last max_seq_len tokens.

At temperature 0 the text equals the full forward pass's argmax continuation: within the window
with the whole text as context, past it with the last max_seq_len tokens (re-run from position
0, as nanoGPT crops), and with --window_shift=k with the contexts that k implies.

The exactness tests use an untrained model with every weight scaled by 4: its greedy text is
varied (a briefly trained tiny model only repeats one character, which any context reproduces,
so a wrong window would go unnoticed). The CLI tests use a real run's checkpoint.
"""
from __future__ import annotations

import numpy as np
import pytest

import helpers
import shared_runs

pytestmark = pytest.mark.e2e


W = 16  # the exactness model's max_seq_len
CKPT_W = shared_runs.MAX_SEQ_LEN  # the trained checkpoint's
PROMPT = "Citizen:"
SCALE = 4.0


@pytest.fixture(scope="module", autouse=True)
def exact_matmuls():
  """Full float32 matmuls (GPUs default to TF32), so greedy argmaxes do not flip on rounding."""
  import jax
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def model_tok():
  import jax
  from flax import nnx

  from configs import shakespeare_char
  from models.config import ModelConfig
  from models.transformer import Transformer
  from train.data.tokenizer import CharTokenizer
  tok = CharTokenizer.from_text(helpers.CORPUS.read_text())
  fields = shakespeare_char.get_config().model.to_dict()
  fields.update(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1,
                d_ff=64, max_seq_len=W)
  with nnx.use_eager_sharding(False):
    model = Transformer(ModelConfig.from_dict(fields), rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.tree.map(lambda x: x * SCALE, state)), tok


@pytest.fixture(scope="module")
def workdir(preempted):
  return preempted


@pytest.fixture(scope="module")
def window_logits(model_tok):
  """ids -> last-position logits of a full forward over exactly those ids (<= W of them),
  jitted once: right padding to W is invisible to causal attention."""
  import jax
  from flax import nnx
  graphdef, state = nnx.split(model_tok[0])
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))

  def logits(ids) -> np.ndarray:
    assert 0 < len(ids) <= W
    padded = np.zeros((1, W), np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(forward(state, padded))[0, len(ids) - 1]
  return logits


def _reference(window_logits, prompt_ids, n_new: int, shift: int) -> list[int]:
  """Greedy tokens after the prompt, each from the full forward over the context the sampler
  promises: the whole text while it fits in W; then, every `shift` tokens, the last
  W - shift + 1 tokens, growing by one per token until the next re-run."""
  ids = list(prompt_ids[-W:])
  n_prompt = len(ids)
  context_start = 0
  for _ in range(n_new):
    if len(ids) - context_start > W:  # the window is full: re-run on the last W - shift + 1
      context_start = len(ids) - (W - shift + 1)
    ids.append(int(np.argmax(window_logits(ids[context_start:]))))
  return ids[n_prompt:]


@pytest.mark.parametrize("shift, n_new", [(1, 3 * W), (5, 3 * W), (1, W - len(PROMPT) + 1)])
def test_greedy_past_the_window_equals_full_forward_argmax(model_tok, window_logits, shift,
                                                           n_new):
  """The last case fills the window exactly: no re-run at all."""
  from train.infer.generate import generate
  model, tok = model_tok
  prompt_ids = tok.encode(PROMPT)
  assert len(prompt_ids) == len(PROMPT) < W
  text = generate(model, tok, PROMPT, n_new, temperature=0.0, window_shift=shift)
  want = _reference(window_logits, prompt_ids, n_new, shift)
  assert len(text) == n_new and len(set(text)) > n_new // 4, repr(text)  # varied, see above
  assert text == tok.decode(want)
  within = min(n_new, W - len(prompt_ids) + 1)  # tokens whose context is the whole text
  ids = list(prompt_ids)
  for _ in range(within):
    ids.append(int(np.argmax(window_logits(ids))))
  assert text[:within] == tok.decode(ids[len(prompt_ids):])


def test_prompt_longer_than_the_context_conditions_on_its_last_tokens(model_tok, window_logits):
  from train.infer.generate import generate
  model, tok = model_tok
  long_prompt = "All:\nSpeak, speak.\n\n" * 4
  ids = tok.encode(long_prompt)
  assert len(ids) > W
  text = generate(model, tok, long_prompt, 10, temperature=0.0)
  assert text == tok.decode(_reference(window_logits, ids, 10, 1))


def test_num_samples_are_independent_draws(model_tok):
  from train.infer.generate import generate_samples
  model, tok = model_tok
  texts = generate_samples(model, tok, PROMPT, 2 * W, temperature=1.0, seed=3, num_samples=3)
  assert len(texts) == 3 and all(len(t) == 2 * W for t in texts)
  assert len(set(texts)) == 3
  assert generate_samples(model, tok, PROMPT, 2 * W, temperature=1.0, seed=3,
                          num_samples=3) == texts
  greedy = generate_samples(model, tok, PROMPT, W, temperature=0.0, num_samples=2)
  assert greedy[0] == greedy[1]


def _cli(*args: str) -> helpers.Result:
  return helpers.command("train.cli.sample", *args, timeout=180)


def test_cli_max_new_tokens_beyond_the_context(workdir):
  from train.infer.generate import SEPARATOR
  res = _cli(f"--checkpoint={workdir}", "--prompt=ROMEO:", f"--max_new_tokens={4 * CKPT_W}",
             "--num_samples=2", "--seed=1")
  assert res.rc == 0, res.stderr[-3000:]
  samples = res.stdout[:-1].split(SEPARATOR)  # print() adds one newline
  assert len(samples) == 2
  for s in samples:
    assert s.startswith("ROMEO:") and len(s) == len("ROMEO:") + 4 * CKPT_W


@pytest.mark.parametrize("flag, needle", [("--num_samples=0", "--num_samples"),
                                          ("--window_shift=0", "--window_shift"),
                                          (f"--window_shift={CKPT_W + 1}",
                                           f"max_seq_len={CKPT_W}")])
def test_cli_bad_sampling_flags_are_one_line(workdir, flag, needle):
  helpers.assert_one_line_error(_cli(f"--checkpoint={workdir}", flag), "ConfigError", needle)
