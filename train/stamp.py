"""`python -m train.stamp PATH --config=configs/x.py [--config.f=v] [--step=N|latest]
[--tokenizer=char|byte] [--corpus=FILE]`: write pregate metadata for a checkpoint that has none
(or has wrong metadata), so it can be verified and loaded again.

Salvage, not forgery: the config's abstract parameter signature must equal orbax's stored one
exactly (every path, shape and dtype, read from orbax's array metadata, never array data), or
nothing is written (ArchitectureMismatchError listing every difference, exit 2). Arrays are never
touched. What neither the tensors nor the config can tell (val loss and its eval batches, tokens
seen, the gate verdict, the data fingerprint, the mesh at save, why training ended) is written as
null and listed in `stamped.unknown`, so `train.inspect --quality` counts it as missing instead
of trusting a guess; git commit and library versions are the stamping environment's.

The file is replaced atomically (a temp file in `<step>/meta/`, then os.replace), and an existing
one is first copied to `<step>/meta/metadata.bak-<UTC time>`. orbax restores only the items a
caller asks for and pregate reads the metadata file directly, so a `meta` dir created here after
the save loads with `train.restore.load_for_eval` like any other (tests/test_inspect_stamp.py).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from gates import arch_match, chinchilla
from gates.errors import ConfigError, DataError, PregateError
from models.config import ModelConfig, ModelConfigError
from models.params import abstract_model, count_params, param_shapes
from train import inspect as inspect_lib
from train import cli, prepare_data, provenance
from train.checkpoint import META_SCHEMA, Checkpointer, CheckpointError, write_json_atomic
from train.run_state import architecture
from train.tokenizer import KINDS, Tokenizer, build_tokenizer

# Training provenance that a checkpoint's tensors and a config cannot recover: written as null.
# (evals_without_improvement and nonfinite_skipped are left out: a resume reads them as counts.)
UNKNOWN = ("data", "gate", "eval_batches", "mesh", "tokens_seen", "val_loss", "best_val_loss",
           "termination")


def _tokenizer(data_cfg: dict[str, Any], kind: str | None,
               corpus: str | None) -> tuple[Tokenizer, dict[str, Any]]:
  """The tokenizer and where it came from; char needs the corpus text it was built from."""
  kind = kind or data_cfg["tokenizer"]
  if kind not in KINDS:
    raise DataError(f"unknown tokenizer kind {kind!r}; use one of {', '.join(KINDS)}")
  if kind == "byte":
    return build_tokenizer(kind), {"type": kind}
  path = os.path.abspath(corpus or provenance.resolve_path(data_cfg["corpus"]))
  text, sha, _ = prepare_data.read_corpus(path)
  return build_tokenizer(kind, text), {"type": kind, "corpus": path, "corpus_sha256": sha}


def build_meta(config: dict[str, Any], model_cfg: ModelConfig, tokenizer: Tokenizer, step: int,
               signature: inspect_lib.Signature, replaced: bool,
               tokenizer_from: dict[str, Any]) -> dict[str, Any]:
  """The metadata train/loop.py writes, with the unknowable fields null and `stamped` added."""
  batch = config["batch"]
  return dict(
      schema=META_SCHEMA, architecture=architecture(model_cfg.family), model=model_cfg.to_dict(),
      param_counts=count_params(model_cfg).to_dict(), tokenizer=tokenizer.to_json(),
      signature={p: [list(s), d] for p, (s, d) in sorted(signature.items())}, config=config,
      planned_tokens=chinchilla.planned_tokens(config["train_steps"], batch["global_batch"],
                                               batch["seq_len"]),
      libraries=provenance.library_versions(), git_commit=provenance.git_commit(), step=step,
      **{k: None for k in UNKNOWN},
      stamped={"by": "train.stamp", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "replaced_existing": replaced, "tokenizer_from": tokenizer_from,
               "unknown": list(UNKNOWN)})


def write_atomic(meta_dir: str, meta: dict[str, Any]) -> str | None:
  """Replace `meta_dir/metadata` in one rename, backing up an existing file; -> backup path."""
  target = os.path.join(meta_dir, "metadata")
  backup = None
  try:
    os.makedirs(meta_dir, exist_ok=True)
    if os.path.exists(target):
      now = datetime.datetime.now(datetime.timezone.utc)
      backup = f"{target}.bak-{now:%Y%m%dT%H%M%S.%fZ}"
      shutil.copy2(target, backup)
    write_json_atomic(target, meta)
  except OSError as e:
    raise CheckpointError(f"cannot write {target}: {e}") from e
  return backup


def stamp(path: str, config: Any, step: str | None = None, tokenizer_kind: str | None = None,
          corpus: str | None = None) -> list[str]:
  """Verify the config against the stored tensors, then write the metadata; -> report lines."""
  if config is None:
    raise ConfigError("no config: pass --config=<the config the checkpoint was trained with>")
  cfg = config.to_dict()
  try:
    model_cfg = ModelConfig.from_dict(cfg["model"])
  except (ModelConfigError, TypeError) as e:
    raise ConfigError(str(e)) from None
  directory, spec = inspect_lib.locate(path, step)
  ckpt = Checkpointer(directory, read_only=True)
  try:
    resolved = ckpt.resolve(spec)
    stored, steps = inspect_lib.stored_signature(ckpt, resolved), ckpt.steps()
  finally:
    ckpt.close()
  expected = param_shapes(abstract_model(model_cfg))
  diffs = arch_match.signature_differences(expected, stored)
  if diffs:
    raise arch_match.ArchitectureMismatchError(f"checkpoint {directory}/{resolved}", diffs)
  tok, tokenizer_from = _tokenizer(cfg["data"], tokenizer_kind, corpus)
  if tok.vocab_size != model_cfg.vocab_size:
    raise DataError(f"the {tokenizer_from['type']} tokenizer has {tok.vocab_size} symbols but "
                    f"model.vocab_size={model_cfg.vocab_size}; pass the --corpus/--tokenizer "
                    f"the checkpoint was trained with")
  meta_dir = os.path.join(directory, str(resolved), "meta")
  old = _previous(os.path.join(meta_dir, "metadata"))
  meta = build_meta(cfg, model_cfg, tok, resolved, expected, old is not None, tokenizer_from)
  backup = write_atomic(meta_dir, meta)
  lines = [f"stamped {meta_dir}/metadata " + (f"(replaced; the previous file is kept at {backup})"
                                              if backup else "(new file)"),
           f"verified: the config's {len(expected)} parameter tensors equal the stored ones "
           f"(paths, shapes, dtypes); no array was read or written",
           f"tokenizer: {tok.vocab_size} symbols, " + ", ".join(
               f"{k}={v}" for k, v in tokenizer_from.items()),
           "left null (not recoverable from tensors + config): " + ", ".join(UNKNOWN)]
  if isinstance(old, dict):
    claimed = old.get("model") if isinstance(old.get("model"), dict) else {}
    wrong = arch_match.config_differences(model_cfg.to_dict(), claimed)
    lines.append("the replaced metadata " + ("disagreed with the tensors: " + "; ".join(wrong)
                                             if wrong else "had the same model config"))
  elif old is not None:
    lines.append(f"the replaced metadata was {old}")
  return lines + inspect_lib.summary(directory, resolved, steps, meta, stored)


def _previous(path: str) -> dict[str, Any] | str | None:
  """The metadata about to be replaced: its JSON, a description if unusable, None if absent."""
  try:
    with open(path) as f:
      old = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    return f"unreadable ({e})"
  return old if isinstance(old, dict) else "not a JSON object"


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("pass one PATH: a workdir, checkpoints dir or step dir", exitcode=2)
  from train.metrics_log import quiet_libraries
  quiet_libraries()
  f = flags.FLAGS
  try:
    print("\n".join(stamp(argv[1], f.config, f.step, f.tokenizer, f.corpus)))
  except PregateError as e:
    cli.fail(e)


def run() -> None:
  """Entry point; the flags are defined here, so importing this module adds none."""
  config_flags.DEFINE_config_file("config", None, "The experiment config the checkpoint was "
                                  "trained with (plus the same --config.* overrides).",
                                  lock_config=True)
  flags.DEFINE_string("step", None, "latest | N (default latest, or the step dir's).")
  flags.DEFINE_enum("tokenizer", None, list(KINDS), "Tokenizer kind (default: config's).")
  flags.DEFINE_string("corpus", None, "Corpus for the char tokenizer (default: config's).")
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
