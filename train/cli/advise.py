"""`pregate-plan --budget_flops=C` (or `--budget_hours=H --tokens_per_sec=T`): what to train.

The I/O side of gates.adviser, part of the pregate-plan command (train.cli.plan): reads the
budget, the config (vocab, tokens per step, the data for U) and optionally a fitted law
(`--fit=FILE.json` from pregate-fit), then prints the advice, a concrete model shape of pregate's
family counted exactly as the gate counts it, train_steps, the config overrides to paste, and the
gate's verdict on exactly that plan (last line).
"""
from __future__ import annotations

import json
import math
from typing import Any

from absl import flags
from ml_collections import ConfigDict

from core import contracts
from core.errors import ConfigError
from gates import adviser, chinchilla, chinchilla_contract, shapes
from models import params
from models.config import ModelConfig
from train.data import unique_tokens


def define_flags() -> None:
  flags.DEFINE_float("budget_flops", None, "advise: compute budget C in FLOPs (C = 6 N D)")
  flags.DEFINE_float("budget_hours", None, "advise: wall-clock budget in hours; needs "
                     "--tokens_per_sec measured for the config's model (FLOP/s = 6 N T)")
  flags.DEFINE_string("fit", None, "advise with a fitted law (pregate-fit --out=FILE.json) "
                      "instead of the contract's tokens-per-parameter ratio")
  flags.DEFINE_bool("no_data_limit", False, "advise as if unique data were unlimited")


def wanted(f: Any) -> bool:
  return f.budget_flops is not None or f.budget_hours is not None


def load_law(path: str) -> adviser.Law:
  """The law from a pregate-fit JSON file; ConfigError names what is wrong."""
  try:
    with open(path, encoding="utf-8") as fh:
      law = json.load(fh)["law"]
    return adviser.Law(**{k: float(law[k]) for k in ("E", "A", "B", "alpha", "beta")})
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f"--fit={path}: cannot read a fitted law ({type(e).__name__}: {e}); "
                      f"write one with pregate-fit WORKDIR... --out={path}") from None


def _budget(config: ConfigDict, f: Any, n_config: int) -> tuple[float, str]:
  if f.budget_flops is not None:
    if f.budget_hours is not None:
      raise ConfigError("give --budget_flops or --budget_hours, not both")
    if not (f.budget_flops > 0 and math.isfinite(f.budget_flops)):
      raise ConfigError(f"--budget_flops must be a positive number, got {f.budget_flops!r}")
    return f.budget_flops, f"C = {f.budget_flops:.3e} FLOPs (given)"
  if not f.budget_hours > 0 or f.tokens_per_sec is None or not f.tokens_per_sec > 0:
    raise ConfigError("--budget_hours=H needs H > 0 and --tokens_per_sec=T > 0 (a throughput "
                      "measured for the config's model, e.g. by pregate-bench)")
  flops = 6 * n_config * f.tokens_per_sec * f.budget_hours * 3600
  return flops, (f"C = 6 x N {n_config:,} x {f.tokens_per_sec:,.0f} tokens/s x "
                 f"{f.budget_hours:g} h = {flops:.3e} FLOPs (FLOP/s measured on the config's "
                 f"model, assumed to carry over to the advised one)")


def advise(config: ConfigDict, f: Any, data_dir: str | None = None
           ) -> tuple[list[str], chinchilla.Verdict]:
  """Report lines (the gate's verdict on the advised plan last) and that verdict."""
  model_cfg = ModelConfig.from_dict(dict(config.model))
  flops, budget_text = _budget(config, f, params.count_params(model_cfg).total)
  per_source, source = (None, "--no_data_limit") if f.no_data_limit else \
      unique_tokens.unique_train_tokens(config.get("data", ConfigDict()), data_dir)
  unique = None if per_source is None else sum(per_source.values())
  law = load_law(f.fit) if f.fit else None
  contract = chinchilla_contract.parse(contracts.load(chinchilla.CONTRACT))
  advice = adviser.advise(contract, flops, unique, law)
  per_step = chinchilla.planned_tokens(1, config.batch.global_batch, config.batch.seq_len)
  n_max = None
  if per_source is not None:
    n_max = chinchilla.evaluate(contract, 1, 0, per_step, per_step,
                                unique_tokens=per_source).n_params_max
  shape = shapes.shape_for(advice.n_params, model_cfg.vocab_size, model_cfg.tie_embeddings,
                           n_max=n_max)
  fields = {**model_cfg.to_dict(), **shape.model_fields()}
  counts = params.count_params(ModelConfig.from_dict(fields))
  probe = chinchilla.evaluate(contract, counts.total, counts.non_embedding, per_step, per_step,
                              unique_tokens=per_source)
  steps = max(1, round(advice.tokens / per_step))
  if probe.steps_needed is not None:
    steps = max(steps, probe.steps_needed)
  if probe.max_steps is not None:
    steps = min(steps, probe.max_steps)
  verdict = chinchilla.evaluate(contract, counts.total, counts.non_embedding, steps * per_step,
                                per_step, unique_tokens=per_source)
  lines = [f"budget: {budget_text}",
           (f"data: U = {unique:,} unique train tokens ({source}); at most "
            f"{verdict.max_epochs} epochs") if unique is not None else
           f"data: unique tokens unknown ({source}): advice ignores the data limit",
           _advice_line(advice),
           f"shape: {shape.d_model} wide x {shape.n_layers} layers, {shape.n_heads} heads "
           f"({shape.n_kv_heads} KV), d_ff {shape.d_ff}, vocab {shape.vocab_size}: N = "
           f"{counts.total:,} as the gate counts it "
           f"({100 * (counts.total / advice.n_params - 1):+.1f}% vs advice)",
           f"plan: train_steps {steps:,} x {per_step:,} tokens/step = {steps * per_step:,} tokens, "
           f"C = 6*N*D = {6 * counts.total * steps * per_step:.3e} FLOPs",
           "overrides: " + " ".join([*shape.overrides(), f"--config.train_steps={steps}"]),
           verdict.message()]
  return lines, verdict


def _advice_line(a: adviser.Advice) -> str:
  text = (f"advice ({a.rule}): N ~ {a.n_params:,.0f} parameters, D ~ {a.tokens:,.0f} tokens "
          f"(D/N = {a.tokens / a.n_params:.2f}")
  if a.epochs is not None:
    text += f", D' = {a.effective_tokens:,.0f}, {a.epochs:.2f} epochs"
  text += f"); limited by {a.limited_by}"
  if a.n_params < a.unconstrained_n * 0.999:
    text += f" (unlimited data would give N ~ {a.unconstrained_n:,.0f})"
  if a.flops_used < a.budget_flops * 0.999:
    text += (f"; uses {a.flops_used:.3e} of {a.budget_flops:.3e} FLOPs: more would only repeat "
             f"the data, add unique data to spend the rest")
  return text
