"""`pregate-inspect PATH [--step=latest|best|N] [--json] [--quality] [--noverify]`: what a
checkpoint says about itself and how far to trust it. PATH: a run's workdir, its checkpoints
dir or a step dir. Reads JSON metadata and orbax's array metadata, and (unless --noverify)
every array once to prove the files are whole; a damaged checkpoint or a missing step is one
`ERROR:` line, exit 2. The score is explained in `train.ckpt.quality`.
"""
from __future__ import annotations

import json

from absl import flags

from core import cli
from core.errors import CheckpointError, PregateError
from gates import arch_match
from train.ckpt import metadata, quality
from train.ckpt.checkpointer import Checkpointer
from train.ckpt.stepspec import locate

FLAGS = flags.FLAGS


def report(path: str, step: str | None = None, as_json: bool = False,
           with_quality: bool = False, verify: bool = True) -> str:
  """What the CLI prints; raises PregateError for a damaged checkpoint or a missing step.
  verify reads every array once, so truncated or missing array files are reported too."""
  directory, spec = locate(path, step)
  ckpt = Checkpointer(directory, read_only=True)
  try:
    at = ckpt.resolve(spec)
    raw, stored, steps = metadata.read_json(directory, at), ckpt.array_signature(at), ckpt.steps()
    verified = ckpt.verify_arrays(at) if verify else None
  finally:
    ckpt.close()
  if raw is not None and not isinstance(raw, dict):
    raise CheckpointError(f"checkpoint {directory}/{at}: metadata is not a JSON object")
  meta = metadata.parse(raw)
  q = quality.quality(meta, stored, at) if with_quality else None
  if q and verify:
    q["fingerprint"]["recomputed"] = _recompute(directory, at, meta)
  if as_json:
    if meta is None and q is None:
      raise arch_match.MissingMetadataError(f"{directory}/{at}")
    return json.dumps(raw if q is None else {"metadata": raw, "quality": q}, indent=2)
  lines = quality.summary(directory, at, steps, meta, stored)
  if verified is not None:
    lines.append(f"arrays        all readable ({verified / 2**20:.1f} MiB)")
  if q and verify:
    lines.append(f"  recomputed  {q['fingerprint']['recomputed']}")
  lines += [f"quality       {q['score']}/{q['max']}"] if q else []
  for name, r in (q or {}).get("subscores", {}).items():
    lines.append(f"  {name:<21} {r['score']:>2}/{r['max']}")
    lines += [f"    -{x['points']} {x['reason']}" for x in r["lost"]]
  return "\n".join(lines)


def _recompute(directory: str, step: int, meta: metadata.Metadata | None) -> str:
  """With --quality: the fingerprint recomputed now under the metadata's model (the check
  every load path makes), reported rather than raised."""
  from train.ckpt.restore import verify_stored
  if not quality.fingerprint_status(meta)["present"]:
    return "not possible (no fingerprint recorded)"
  try:
    diff = verify_stored(directory, step)
  except arch_match.FingerprintMismatchError as e:
    return "MISMATCH: " + str(e).split(": ", 1)[-1]
  except PregateError as e:
    return f"not possible ({type(e).__name__}: {e})"
  return f"matches (difference {diff:.2g}): the metadata describes the tensors"


def _define_flags() -> None:
  flags.DEFINE_string("step", None, "latest | best | N (default latest, or the step dir's).")
  flags.DEFINE_bool("json", False, "Print the raw metadata JSON ({metadata, quality} with "
                    "--quality).")
  flags.DEFINE_bool("quality", False, "Add the 0-100 metadata quality score with reasons.")
  flags.DEFINE_bool("verify", True, "Read every array once to detect truncated or missing "
                    "array files (--noverify: metadata only, for very large checkpoints).")


def main(argv: list[str]) -> None:
  print(report(argv[0], FLAGS.step, FLAGS.json, FLAGS.quality, FLAGS.verify))


def run() -> None:
  """Console-script entry point."""
  cli.run_command(main, _define_flags, positional=("path",))


if __name__ == "__main__":
  run()
