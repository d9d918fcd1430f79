"""The exported model's README.md: what it is, how it was trained and how far to trust it.

Every figure comes from the checkpoint's own metadata (written by the training run), never from
the exporting environment, so a re-export of the same checkpoint writes the same card. A
checkpoint lacking any field the card needs is refused by `missing_fields` (exporting it would
publish an unverifiable claim); `allow_incomplete` prints such fields as "unknown".
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from core.errors import PregateError
from gates import chinchilla
from models.config import ModelConfig
from train.ckpt.metadata import Metadata

UNKNOWN = "unknown (not recorded in the checkpoint)"


class ModelCardError(PregateError):
  """The checkpoint lacks what the model card must state."""


def _d(x: Any) -> dict[str, Any]:
  return x if isinstance(x, dict) else {}


def missing_fields(meta: Metadata) -> list[str]:
  """The card's required facts this checkpoint does not record."""
  gate, data = _d(meta.gate), _d(meta.data)
  checks = {
      "gate verdict (gate.zone/passed/bypassed)": all(k in gate for k in
                                                      ("zone", "passed", "bypassed")),
      "param_counts.total": isinstance(_d(meta.param_counts).get("total"), int),
      "tokens_seen": isinstance(meta.tokens_seen, int),
      "val_loss": isinstance(meta.val_loss, (int, float)),
      "data fingerprint (data.source_sha256)": isinstance(data.get("source_sha256"), str),
      "libraries": bool(_d(meta.libraries)),
      "git_commit": isinstance(meta.git_commit, str) and bool(meta.git_commit),
  }
  return [name for name, ok in checks.items() if not ok]


def require(meta: Metadata, source: str, path: str) -> None:
  """Refuse (one line, with the fix) a checkpoint the card cannot describe truthfully."""
  lacking = missing_fields(meta)
  if lacking:
    raise ModelCardError(
        f"{source} lacks what the model card must state: {', '.join(lacking)} (a stamped or "
        f"imported checkpoint cannot know them). Export a checkpoint saved by train.main, "
        f"warm-start a run from this one with `train.main --init={path}` and export that, or "
        f"pass --allow_incomplete_card to publish them as unknown")


def _verdict(gate: Mapping[str, Any]) -> str:
  if not gate:
    return UNKNOWN
  ratio, tokens, n = gate.get("ratio"), gate.get("tokens"), gate.get("n_params")
  # The gate's own truncation (a refused 19.999 never reads as 20.00), else the stored ratio.
  ratio_s = (chinchilla.ratio_text(tokens, n) if isinstance(tokens, int) and isinstance(n, int)
             and n else f"{ratio:.2f}" if isinstance(ratio, (int, float)) else "?")
  floor = gate.get("floor_ratio", 20)
  eff = gate.get("effective_ratio_text")
  # Contract v1.2 decides on effective tokens D' (repeats counted at their worth).
  judged = (f"effective D'/N = {eff}" if eff else f"planned D/N = {ratio_s}")
  context = f" (planned D/N = {ratio_s}{_epochs(gate)})" if eff else ""
  if gate.get("prior_tokens"):  # a warm start (contract v1.3): P + D' is judged
    context = (f" ({judged} of this run{_epochs(gate)}; P = {gate['prior_tokens']:,} tokens the "
               f"initial weights already saw: {gate.get('prior_source', '?')})")
    judged = f"(P + D')/N = {gate.get('total_ratio_text', '?')}"
  if gate.get("passed"):
    return (f"passed ({gate.get('zone')} zone): {judged} >= {floor}{context} "
            f"(contract {gate.get('contract', '?')} v{gate.get('contract_version', '?')})")
  if gate.get("bypassed"):
    rules = ", ".join(str(r) for r in gate.get("bypassed_rules") or [])
    return (f"**BYPASSED** with --force_under_provisioned ({gate.get('zone')} zone): {judged} "
            f"< {floor}{context}{f'; rules bypassed: {rules}' if rules else ''}; this model is "
            f"under-trained for its size and is not a compute-optimal result")
  return f"refused ({gate.get('zone')} zone), {judged}{context}"


def _epochs(gate: Mapping[str, Any]) -> str:
  """'; tinyshakespeare.txt 3.47 epochs' for each data source the gate recorded."""
  parts = [f"{s.get('name')} {s.get('epochs'):.2f} epochs" for s in gate.get("sources") or []
           if isinstance(s, Mapping) and isinstance(s.get("epochs"), (int, float))]
  return f"; {', '.join(parts)}" if parts else ""


def _n(x: Any) -> str:
  return UNKNOWN if x is None else f"{x:,}" if isinstance(x, int) else str(x)


def _guards(meta: Metadata) -> str:
  """What the run's guards did: spikes skipped in the step and each rollback's verdict."""
  rollbacks = [r for r in meta.rollbacks or [] if isinstance(r, Mapping)]
  parts = [f"{meta.spikes_skipped or 0} loss spike(s) skipped in the step"]
  parts += [f"rolled back at step {r.get('at_step')} to step {r.get('to_step')} "
            f"({r.get('verdict')}"
            + (f", batches {r['skipped_batches'][0]}..{r['skipped_batches'][1]} skipped)"
               if r.get("skipped_batches") else ")") for r in rollbacks]
  return "; ".join(parts) if meta.has("spikes_skipped") or rollbacks else UNKNOWN


def _ship(ship: Mapping[str, Any] | None) -> list[str]:
  """The ship verdict line, when `pregate-ship` judged this very checkpoint (WORKDIR/ship.json):
  the verdict, the contract and every check that did not pass."""
  if not ship:
    return []
  contract = _d(ship.get("contract"))
  rows = [r for r in ship.get("rows") or [] if isinstance(r, Mapping)]
  short = [f"{r.get('check')} {r.get('status')}" for r in rows if r.get("status") != "PASS"]
  return [f"- Ship verdict: **{ship.get('verdict')}** (pregate-ship against contract "
          f"{contract.get('name', '?')} v{contract.get('version', '?')}, {ship.get('time', '?')}"
          f"; {len(rows)} checks, " + (f"not passed: {', '.join(short)}" if short else
                                       "all passed") + ")."]


def render(meta: Metadata, cfg: ModelConfig, tokenizer_kind: str, *,
           dtype: str, export_versions: Mapping[str, str], eot: str | None = None,
           eos_id: int | None = None, ship: Mapping[str, Any] | None = None) -> str:
  """The README.md text (YAML front matter for the Hub, then the card); `ship`: the ship
  verdict recorded for this checkpoint (WORKDIR/ship.json), if any."""
  counts, data, gate = _d(meta.param_counts), _d(meta.data), _d(meta.gate)
  n, seen, loss = counts.get("total"), meta.tokens_seen, meta.val_loss
  unit = {"char": "character", "byte": "byte"}.get(tokenizer_kind, "token")
  dn = (chinchilla.ratio_text(seen, n) if isinstance(seen, int) and isinstance(n, int) and n
        else UNKNOWN)
  has_loss = isinstance(loss, (int, float))
  loss_s = (f"{loss:.4f} nats/token; {loss / math.log(2):.4f} bits per token = bits per "
            f"{unit} (one token per {unit})") if has_loss else UNKNOWN
  libs = ", ".join(f"{k} {v}" for k, v in sorted(_d(meta.libraries).items()))
  exported = ", ".join(f"{k} {v}" for k, v in sorted(export_versions.items()))
  arch = cfg.hf_architecture
  shape = (f"d_model {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} query heads / "
           f"{cfg.n_kv_heads} key-value heads (head_dim {cfg.head_dim}), SwiGLU d_ff {cfg.d_ff}, "
           f"RMSNorm eps {cfg.norm_eps:g}, RoPE theta {cfg.rope_theta:g}, context "
           f"{cfg.max_seq_len}, {'tied' if cfg.tie_embeddings else 'untied'} embeddings"
           f"{', q/k/v biases' if cfg.qkv_bias else ''}")
  fingerprint = (f"source sha256 {_n(data.get('source_sha256'))}, train split "
                 f"{_n(data.get('train_sha256'))}, val split {_n(data.get('val_sha256'))} "
                 f"({_n(data.get('train_tokens'))} / {_n(data.get('val_tokens'))} tokens)")
  lines = [
      "---", "library_name: transformers", "pipeline_tag: text-generation",
      f"tags: [pregate, {cfg.hf_model_type}, causal-lm]", "---", "",
      f"# {arch} exported by pregate", "",
      (f"A {cfg.n_layers}-layer decoder-only language model trained with pregate (JAX/Flax "
       f"NNX) and exported to the Hugging Face `{arch}` layout ({dtype} weights)."), "",
      "## Architecture", "",
      f"- {arch} (`model_type: {cfg.hf_model_type}`): {shape}.",
      (f"- Tokenizer: pregate {tokenizer_kind} tokenizer, vocabulary {cfg.vocab_size}, "
       + (f"end-of-text token `{eot}` (id {eos_id}, the EOS)." if eot else
          "no special tokens.")),
      f"- Parameters N = {_n(n)} ({_n(counts.get('non_embedding'))} non-embedding).", "",
      "## Training", "",
      f"- Chinchilla gate: {_verdict(gate)}.",
      (f"- Tokens seen D = {_n(seen)} at step {_n(meta.step)}; D/N = {dn} (20 is "
       f"compute-optimal)."),
      f"- Validation loss: {loss_s}.",
      f"- Run guards: {_guards(meta)}.", *_ship(ship),
      f"- Data fingerprint: {fingerprint}.",
      f"- Trained with: {libs or UNKNOWN}.",
      f"- pregate git commit: {_n(meta.git_commit)}.",
      f"- Exported with: {exported}.", "",
      "## Intended use", "",
      ("Research and teaching: studying small language models and checking training and "
       "conversion pipelines. It is not instruction-tuned, not safety-tested and not suited to "
       "producing text anyone relies on; it continues text in the style of its training data."),
      "", "## Use", "", "```python",
      "from transformers import AutoModelForCausalLM, AutoTokenizer",
      "tok = AutoTokenizer.from_pretrained(PATH)",
      "model = AutoModelForCausalLM.from_pretrained(PATH)",
      "ids = tok(\"ROMEO:\", return_tensors=\"pt\").input_ids",
      "print(tok.decode(model.generate(ids, max_new_tokens=100, do_sample=False)[0]))",
      "```", ""]
  return "\n".join(lines)
