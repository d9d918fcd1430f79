"""A mixture run stopped and re-run ends bitwise equal to one that never stopped; its start-up
log and checkpoint metadata show each source's planned tokens, unique tokens and epochs."""
import json

import numpy as np
import pytest

import helpers

pytestmark = pytest.mark.e2e


STEPS, STOP_AT = 40, 15
CONFIG = '''
from ml_collections import ConfigDict

from configs import shakespeare_char


def get_config(arg=None):
  c = shakespeare_char.get_config()
  c.model.vocab_size = 66  # 65 characters + the end-of-text id
  c.data.update(eot_token="<|endoftext|>", val_split="documents", txt_separator="\\n\\n",
                workers=1, mixture_block=64)
  c.data.sources = ConfigDict({{"early": {{"corpus": "{a}", "weight": 0.7}},
                               "late": {{"corpus": "{b}", "weight": 0.3}}}})
  return c
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("mixresume")
  text = helpers.CORPUS.read_text("utf-8")
  cut = text.index("\n\n", len(text) // 2)
  (root / "a.txt").write_text(text[:cut])
  (root / "b.txt").write_text(text[cut + 2:])
  config = root / "mix_config.py"
  config.write_text(CONFIG.format(a=root / "a.txt", b=root / "b.txt"))
  flags = [*helpers.tiny_flags(None, {"train_steps": STEPS}), helpers.FORCE]
  whole = helpers.run_main(*flags, workdir=root / "whole", config=str(config))
  first = helpers.run_main(*flags, f"--stop_after_steps={STOP_AT}", workdir=root / "split",
                           config=str(config))
  second = helpers.run_main(*flags, workdir=root / "split", config=str(config))
  return root, whole, first, second


def test_resumed_mixture_run_is_bitwise_identical(runs):
  root, whole, first, second = runs
  assert whole.rc == 0, whole.stderr[-3000:]
  assert first.rc == 75, first.stderr[-3000:]
  assert second.rc == 0, second.stderr[-3000:]
  a = helpers.flat(helpers.load_params(root / "whole", STEPS))
  b = helpers.flat(helpers.load_params(root / "split", STEPS))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  evals = [helpers.events(helpers.read_jsonl(root / d / "metrics.jsonl"), "eval")[-1]
           for d in ("whole", "split")]
  assert evals[0]["val_loss"] == evals[1]["val_loss"] and evals[0]["val_bpb"] > 0


def test_sources_planned_unique_and_epochs_logged_and_stamped(runs):
  root, whole, _, _ = runs
  meta = helpers.checkpoint_meta(root / "whole", STEPS)
  sources = meta["data_sources"]
  assert list(sources) == ["early", "late"]
  tokens = STEPS * int(helpers.TINY["batch.global_batch"]) * int(helpers.TINY["batch.seq_len"])
  assert sum(s["planned_tokens"] for s in sources.values()) == tokens
  for name, s in sources.items():
    assert s["epochs"] == pytest.approx(s["planned_tokens"] / s["unique_tokens"])
    assert f"data source '{name}': weight {s['weight']:.3f}" in whole.stderr
  assert sources["early"]["weight"] == pytest.approx(0.7)
  manifest = json.loads((root / "whole" / "data" / "manifest.json").read_text())
  assert manifest["kind"] == "mixture"
  assert {n: e["train_tokens"] for n, e in manifest["sources"].items()} == \
      {n: s["unique_tokens"] for n, s in sources.items()}
