"""An export checked against the model it came from (what `pregate-ship` runs).

`logits_check`: transformers' AutoModelForCausalLM (float32) and AutoTokenizer load the
exported directory in this process; their logits must equal pregate's own forward at every
position of a few windows of text, and their token ids pregate's tokenizer's ids.

`install_check`: the same directory loaded by a fresh interpreter that cannot import pregate:
`python -I -S` (no PYTHONPATH, no user site, no site-packages .pth hooks, so pregate's
editable install is invisible) in an empty temporary directory, with only the site-packages
directories on its path, the Hugging Face hub offline and a fresh, empty HF_HOME. It
reproduces one window's ids and logits from the directory alone: what a user who installs only
transformers gets.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tempfile
from typing import Any, Sequence

import numpy as np

from train.data.tokenizer import Tokenizer

INSTALL_TIMEOUT_S = 600
PREGATE_PACKAGES = ("core", "models", "gates", "train", "configs")

_CHILD = r"""
import importlib.util, json, sys
hf_dir, expected = sys.argv[1], sys.argv[2]
sys.path.extend(sys.argv[3:])
leaked = [m for m in __PACKAGES__ if importlib.util.find_spec(m) is not None]
import numpy as np, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
with open(expected, encoding="utf-8") as f:
  want = json.load(f)
tok = AutoTokenizer.from_pretrained(hf_dir, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, local_files_only=True)
ids = tok(want["text"])["input_ids"]
with torch.no_grad():
  logits = model.eval()(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()
same = ids == want["ids"]
diff = float(np.abs(logits - np.asarray(want["logits"], np.float32)).max()) if same else None
print(json.dumps({"leaked": leaked, "transformers": transformers.__version__,
                  "architecture": type(model).__name__, "ids_equal": same, "max_diff": diff}))
"""


def _forward(model: Any, ids: Sequence[int]) -> np.ndarray:
  import jax.numpy as jnp
  return np.asarray(model(jnp.asarray(np.asarray(ids, np.int32))[None])[0], np.float32)


def logits_check(model: Any, tokenizer: Tokenizer, hf_dir: str, texts: Sequence[str]
                 ) -> tuple[float, int, bool]:
  """(max |logit diff| over every position, positions compared, whether AutoTokenizer's ids
  equal pregate's on every text). Each text is cut to the model's context."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
  hf_tok = AutoTokenizer.from_pretrained(hf_dir)
  worst, positions, equal = 0.0, 0, True
  for text in texts:
    ids = [int(t) for t in tokenizer.encode(text)][:model.cfg.max_seq_len]
    text = tokenizer.decode(np.asarray(ids))
    equal = equal and [int(t) for t in hf_tok(text)["input_ids"]] == ids
    with torch.no_grad():
      theirs = hf(torch.tensor([ids], dtype=torch.long)).logits[0].float().numpy()
    worst = max(worst, float(np.abs(theirs - _forward(model, ids)).max()))
    positions += len(ids)
  return worst, positions, equal


def install_check(model: Any, tokenizer: Tokenizer, hf_dir: str, text: str,
                  tolerance: float) -> tuple[bool | None, str]:
  """Load `hf_dir` in a fresh interpreter that cannot import pregate; -> (passed, what was
  done and found). None when no interpreter could be run."""
  ids = [int(t) for t in tokenizer.encode(text)][:model.cfg.max_seq_len]
  text = tokenizer.decode(np.asarray(ids))
  with tempfile.TemporaryDirectory(prefix="pregate-install-") as tmp:
    expected = os.path.join(tmp, "expected.json")
    with open(expected, "w", encoding="utf-8") as f:
      json.dump({"text": text, "ids": ids, "logits": _forward(model, ids).tolist()}, f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=os.path.join(tmp, "hf"),
               PYTHONNOUSERSITE="1")
    child = _CHILD.replace("__PACKAGES__", repr(PREGATE_PACKAGES))
    how = (f"fresh `{os.path.basename(sys.executable)} -I -S` in an empty temp dir, PYTHONPATH "
           f"cleared, site-packages without .pth hooks, hub offline")
    try:
      proc = subprocess.run([sys.executable, "-I", "-S", "-c", child, os.path.abspath(hf_dir),
                             expected, *site.getsitepackages()], cwd=tmp, env=env,
                            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
      return None, f"{how}: could not run ({e})"
  if proc.returncode != 0:
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return False, f"{how}: loading the export failed: {last}"
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  if got["leaked"]:
    return None, f"{how}: pregate's packages {got['leaked']} were still importable"
  said = (f"{how}: transformers {got['transformers']} loaded {got['architecture']}; ids "
          f"{'equal' if got['ids_equal'] else 'DIFFER'}")
  if not got["ids_equal"]:
    return False, said
  ok = got["max_diff"] <= tolerance
  return ok, f"{said}, max |logit diff| {got['max_diff']:.2g} over {len(ids)} positions"
