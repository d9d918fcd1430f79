"""A pregate checkpoint as an lm-evaluation-harness (0.4.13) model, registered as `pregate`.

`PregateLM(checkpoint=W, step=N, batch_size=B)` restores through the validated restore
(`load_for_eval`) and scores with the task scorer's batched, jitted log-likelihood
(train/infer/tasks.py), so `lm_eval.simple_evaluate(model=PregateLM(...), tasks=[...])` and
`pregate-lm-eval --model pregate --model_args checkpoint=W ...` give the figures `score()` gives
on the same items. Requests are split into context and continuation ids by the harness's own
TemplateLM; generation is KV-cached greedy (or sampled with do_sample) through
train/infer/generate.py, cut at the first `until` string.

Importing this module needs the `eval` extra: pip install 'pregate[eval]'.
"""
from __future__ import annotations

from typing import Any

try:
  import lm_eval.models  # noqa: F401  (the harness's own models stay registered beside ours)
  from lm_eval import utils as lm_utils
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the message is the point
  raise ImportError("lm-evaluation-harness is not installed; pip install 'pregate[eval]' "
                    f"({e})") from e

from core.errors import ConfigError
from train.infer import generate, tasks

DEFAULT_BATCH = 8
DEFAULT_MAX_GEN_TOKS = 256  # the harness's HFLM default


def _batch_size(value: Any) -> int:
  """An integer batch size; the harness's 'auto' and 'auto:N' mean the default here."""
  if value is None or (isinstance(value, str) and value.startswith("auto")):
    return DEFAULT_BATCH
  try:
    size = int(value)
  except (TypeError, ValueError):
    raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}"
                      ) from None
  if size < 1:
    raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}")
  return size


@register_model("pregate")
class PregateLM(TemplateLM):
  """lm-evaluation-harness model for a pregate checkpoint (model_args `checkpoint=W[,step=N,
  batch_size=B]`; the harness's `device` and `max_batch_size` are accepted and unused: JAX
  places the model on every local device)."""

  def __init__(self, checkpoint: str | None = None, step: str | int = "latest",
               batch_size: Any = DEFAULT_BATCH, max_batch_size: Any = None, device: Any = None,
               **unknown: Any):
    super().__init__()
    del max_batch_size, device
    if unknown:
      raise ConfigError(f"unknown pregate model_args {sorted(unknown)}; known: checkpoint, "
                        "step, batch_size")
    if not checkpoint:
      raise ConfigError("the pregate model needs model_args checkpoint=WORKDIR (a run's "
                        "workdir or its checkpoints/ directory)")
    restored, self._scorer = tasks.restore_scorer(str(checkpoint), step,
                                                  _batch_size(batch_size))
    self.model, self.pregate_tokenizer = restored.model, restored.tokenizer
    self.step = restored.step

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None
                             ) -> PregateLM:
    return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string),
                                   additional_config)

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None
                          ) -> PregateLM:
    """model_args win over the harness's own --batch_size (whose default is 1)."""
    extra = {k: v for k, v in (additional_config or {}).items()
             if v is not None and k not in arg_dict}
    return cls(**arg_dict, **extra)

  @property
  def max_length(self) -> int:
    return self.model.cfg.max_seq_len

  @property
  def eot_token_id(self) -> int | None:
    return self.pregate_tokenizer.eos_id

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
                 ) -> list[int]:
    del add_special_tokens, kwargs  # pregate tokenizers add no special tokens
    return [int(t) for t in self.pregate_tokenizer.encode(string)]

  def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """The harness's split; without an end-of-text id an empty context is scored as
    tasks.encode_pair does (the continuation's first token conditions the rest)."""
    if self.pregate_tokenizer.eos_id is not None or all(r.args[0] for r in requests):
      return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
    return self._loglikelihood_tokens(
        [(r.args, *tasks.encode_pair(self.pregate_tokenizer, *r.args)) for r in requests])

  def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any
                            ) -> list[tuple[float, bool]]:
    del disable_tqdm, kwargs
    answers = self._scorer([(list(ctx), list(cont)) for _, ctx, cont in requests])
    for (request_str, _, _), answer in zip(requests, answers):
      if request_str is not None:
        self.cache_hook.add_partial("loglikelihood", request_str, answer)
    return answers

  def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
    """Each text's full log-likelihood in disjoint windows of max_length (the harness's
    rolling windows), conditioned on the end-of-text id; without one, on its first token."""
    del disable_tqdm
    spans, windows = [], []
    for (text,) in (r.args for r in requests):
      ids = self.tok_encode(text)
      prefix = self.pregate_tokenizer.eos_id
      if prefix is None and ids:
        prefix, ids = ids[0], ids[1:]
      rolled = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
          token_list=ids, prefix_token=prefix, max_seq_len=self.max_length, context_len=1)]
      spans.append((len(windows), len(windows) + len(rolled)))
      windows += rolled
    lls = [ll for ll, _ in self._scorer(windows)]
    out = []
    for (text,), (a, b) in zip((r.args for r in requests), spans):
      out.append(float(sum(lls[a:b])))
      self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
    return out

  def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
    """Greedy (or, with do_sample, tempered) continuations, cut before the first `until`
    string or the end-of-text token, at most max_gen_toks tokens."""
    del disable_tqdm
    out = []
    for context, gen_kwargs in (r.args for r in requests):
      kw = dict(gen_kwargs or {})
      until = kw.pop("until", None) or []
      until = [until] if isinstance(until, str) else list(until)
      if self.pregate_tokenizer.eos_id is not None:
        until.append(self.pregate_tokenizer.decode([self.pregate_tokenizer.eos_id]))
      sample = bool(kw.pop("do_sample", False))
      temperature = float(kw.pop("temperature", 1.0 if sample else 0.0)) if sample else 0.0
      text = generate.generate(self.model, self.pregate_tokenizer, context,
                               int(kw.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
                               temperature=temperature, seed=int(kw.pop("seed", 0) or 0))
      for stop in until:
        if stop:
          text = text.split(stop)[0]
      self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
      out.append(text)
    return out
