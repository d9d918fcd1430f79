"""The smoke task: which of four continuations follows a passage of the validation text.

A check that a model uses its context, made from the run's own held-out split so any corpus
has one: each item is a passage of validation text (the context, cut at an arbitrary
character, often mid-word), its true next characters and three continuations of the same length
cut from other validation passages. Chance is 1/4. It is a smoke test, not a benchmark: a model
that learnt anything about its data beats chance by far, and one that lost its context (a broken
mask, positions or cache) falls back towards it.

The choices continue the context directly: the task's delimiter is '' (DELIMITER), not the
usual ' ', because a cut mid-word is what makes the context decide. Measured on the default
experiment (val loss 1.75): continuations of 8 characters score acc 0.745, 16 0.615, 32 0.485;
cut at word boundaries (a ' ' delimiter), 0.29 whatever the length, as the choices' own
likelihood then outweighs what the context says about the next word.

Built deterministically (a fixed seed, so every run on the same validation split and context
length is scored on the same items) from validation tokens alone, never the training split.
Context and continuation together fill the model's context (`sizes`), so nothing is truncated.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from core.errors import DataError

DELIMITER = ""  # a choice continues the context directly
ITEMS = 200
CHOICES = 4
SEED = 20260526  # fixed: the task depends on the data and the context length, not the run seed
MAX_CONTINUATION = 8

Item = tuple[str, tuple[str, ...], int]  # (context, choices, gold index)


def sizes(max_seq_len: int) -> tuple[int, int]:
  """(context characters, continuation characters): the continuation an eighth of the window
  (at most MAX_CONTINUATION), the context the rest, so the whole request fits in
  `max_seq_len` tokens for any tokenizer of at least one character per token."""
  continuation = max(1, min(MAX_CONTINUATION, max_seq_len // 8))
  return max(1, max_seq_len - continuation), continuation


def build(streams: Sequence[np.ndarray], decode: Callable[[np.ndarray], str], max_seq_len: int,
          eos_id: int | None = None, items: int = ITEMS, seed: int = SEED) -> list[Item]:
  """The task's items from validation token streams (one per data source; decoded with
  `decode`).

  Each stream is split into documents at `eos_id` and each document into non-overlapping
  passages of context + continuation characters (an item never spans two documents); `items`
  passages are drawn as items, each item's distractors the continuations of three other
  passages whose text differs from every other choice. Items are (context, choices, gold) as
  a task file holds them: the context followed by the gold choice is validation text.
  DataError when the split is too short for the task."""
  context, continuation = sizes(max_seq_len)
  docs = []
  for ids in map(np.asarray, streams):
    cuts = np.flatnonzero(ids == eos_id) if eos_id is not None else np.array([], np.int64)
    pieces = [d[1:] if i else d for i, d in enumerate(np.split(ids, cuts))]  # eot ids dropped
    docs += [decode(d) for d in pieces if len(d)]
  width = context + continuation
  passages = [(doc[s:s + context], doc[s + context:s + width])
              for doc in docs for s in range(0, len(doc) - width + 1, width)]
  if len(passages) < max(items, CHOICES):
    raise DataError(f"the validation split holds {len(passages)} passages of {context} + "
                    f"{continuation} characters; the smoke task needs {max(items, CHOICES)}: "
                    f"raise data.val_fraction or leave 'smoke' out of eval.tasks")
  rng = np.random.default_rng(seed)
  out: list[Item] = []
  for k in rng.permutation(len(passages))[:items]:
    choices = [passages[k][1]]
    for j in rng.permutation(len(passages)):
      if len(choices) == CHOICES:
        break
      if j != k and passages[j][1] not in choices:
        choices.append(passages[j][1])
    if len(choices) < CHOICES:
      raise DataError(f"the validation split holds fewer than {CHOICES} distinct continuations "
                      f"of {continuation} characters; leave 'smoke' out of eval.tasks")
    gold = int(rng.integers(CHOICES))
    choices[0], choices[gold] = choices[gold], choices[0]
    out.append((passages[k][0], tuple(choices), gold))
  return out
