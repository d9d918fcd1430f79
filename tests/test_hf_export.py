"""Export: a pregate checkpoint -> a directory `transformers` loads with nothing missing or
unexpected, whose float32 logits equal pregate's at every position and whose greedy generation
equals pregate-sample's; plus the layout traps (q/k row order, rope_theta forms, safetensors
metadata, sharding) and the model card."""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

import helpers
import hf_helpers as hh

pytestmark = pytest.mark.hf


torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """One checkpoint + float32 export per case, shared read-only."""
  from train.hf.export import export
  out = {}
  for (family, tied), name in zip(hh.CASES, hh.IDS):
    root = tmp_path_factory.mktemp(name)
    ckpt = hh.make_checkpoint(root / "run", hh.model_config(family, tied))
    export(str(ckpt), str(root / "hf"))
    out[name] = (ckpt, root / "hf")
  return out


@pytest.mark.parametrize("case", hh.IDS)
def test_transformers_logits_and_greedy_generation_match(exports, case, capfd):
  from train.infer.generate import generate
  from train.restore import load_for_eval
  ckpt, hf_dir = exports[case]
  restored = load_for_eval(str(ckpt))
  model = hh.hf_load(hf_dir)
  assert type(model).__name__ == restored.model.cfg.hf_architecture
  ids = hh.prompt_ids(restored.tokenizer)
  diff = hh.per_position_diff(hh.hf_logits(model, ids), hh.pregate_logits(restored.model, ids))
  assert len(diff) >= 16 and diff.max() < hh.TOL, diff
  prompt = restored.tokenizer.decode(ids)
  ours = generate(restored.model, restored.tokenizer, prompt, 20, temperature=0)
  theirs = model.generate(torch.tensor(ids[None].astype(np.int64)), max_new_tokens=20,
                          do_sample=False)[0, len(ids):].numpy()
  assert len(theirs) == 20 and len(set(theirs.tolist())) > 1  # not a degenerate repeat
  assert restored.tokenizer.decode(theirs) == ours
  err = capfd.readouterr().err.lower()
  for needle in ("missing", "unexpected", "newly initialized", "not used"):
    assert needle not in err, err


def test_permuted_qk_rows_fail_the_check(exports, tmp_path):
  """Negative control: the interleaved->half permutation (right for Meta's layout, wrong for
  pregate's) leaves position 0 exact and breaks every later position."""
  from safetensors.numpy import load_file, save_file

  from train.hf.weights import interleaved_to_half
  from train.restore import load_for_eval
  ckpt, hf_dir = exports["llama-untied"]
  bad = tmp_path / "bad"
  shutil.copytree(hf_dir, bad)
  tensors = load_file(str(bad / "model.safetensors"))
  cfg = load_for_eval(str(ckpt)).model.cfg
  for name in list(tensors):
    if name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = cfg.n_heads if "q_proj" in name else cfg.n_kv_heads
      tensors[name] = np.ascontiguousarray(interleaved_to_half(tensors[name], heads,
                                                               cfg.head_dim))
  save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
  restored = load_for_eval(str(ckpt))
  ids = hh.prompt_ids(restored.tokenizer)
  diff = hh.per_position_diff(hh.hf_logits(hh.hf_load(bad), ids),
                              hh.pregate_logits(restored.model, ids))
  assert diff[0] < hh.TOL, diff  # no rotation at position 0: a one-position check passes
  assert diff[1:].min() > 100 * hh.TOL and diff.max() > 1e-2, diff


def _safetensors_header(path) -> dict:
  raw = path.read_bytes()
  n = struct.unpack("<Q", raw[:8])[0]
  return json.loads(raw[8:8 + n])


def test_config_json_and_safetensors_metadata(exports):
  _, hf_dir = exports["qwen2-untied"]
  c = json.loads((hf_dir / "config.json").read_text())
  assert c["architectures"] == ["Qwen2ForCausalLM"] and c["model_type"] == "qwen2"
  assert c["rope_theta"] == c["rope_parameters"]["rope_theta"] == 500.0
  assert c["rope_parameters"]["rope_type"] == "default"
  assert c["rms_norm_eps"] == 1e-5 and c["head_dim"] == 8 and c["num_key_value_heads"] == 2
  assert c["tie_word_embeddings"] is False and c["use_sliding_window"] is False
  header = _safetensors_header(hf_dir / "model.safetensors")
  assert header["__metadata__"] == {"format": "pt"}
  assert "model.layers.0.self_attn.q_proj.bias" in header and "lm_head.weight" in header
  tied = json.loads((exports["llama-tied"][1] / "config.json").read_text())
  assert tied["tie_word_embeddings"] is True and tied["attention_bias"] is False
  assert "lm_head.weight" not in _safetensors_header(exports["llama-tied"][1] /
                                                     "model.safetensors")
  from transformers import AutoConfig
  loaded = AutoConfig.from_pretrained(str(hf_dir))
  assert loaded.rope_parameters["rope_theta"] == 500.0 and loaded.rms_norm_eps == 1e-5


def test_sharded_export_loads_identically(exports, tmp_path):
  from train.hf.export import export
  ckpt, single = exports["qwen2-tied"]
  export(str(ckpt), str(tmp_path / "sharded"), max_shard_bytes=20_000)
  index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
  files = sorted(set(index["weight_map"].values()))
  assert len(files) > 2 and not (tmp_path / "sharded" / "model.safetensors").exists()
  headers = {f: _safetensors_header(tmp_path / "sharded" / f) for f in files}
  assert all(h.pop("__metadata__") == {"format": "pt"} for h in headers.values())
  assert {n: f for f, h in headers.items() for n in h} == index["weight_map"]
  sizes = [sum(np.prod(t["shape"]) * 4 for t in h.values()) for h in headers.values()]
  assert index["metadata"]["total_size"] == sum(sizes)
  assert all(s <= 20_000 for s in sizes if s > 0)
  ids = hh.prompt_ids(hh.char_tokenizer())
  np.testing.assert_array_equal(hh.hf_logits(hh.hf_load(tmp_path / "sharded"), ids),
                                hh.hf_logits(hh.hf_load(single), ids))


def test_bfloat16_export_round_trips(exports, tmp_path):
  """bf16 weights: transformers (upcast to float32) == pregate on the re-imported bf16 params,
  and the import reads them as param_dtype bfloat16."""
  from train.hf.export import export
  from train.hf.importer import import_hf
  from train.restore import load_for_eval
  ckpt, _ = exports["qwen2-untied"]
  export(str(ckpt), str(tmp_path / "bf16"), dtype="bfloat16")
  header = _safetensors_header(tmp_path / "bf16" / "model.safetensors")
  assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
  assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
  import_hf(str(tmp_path / "bf16"), str(tmp_path / "back"))
  restored = load_for_eval(str(tmp_path / "back"))
  assert restored.model.cfg.param_dtype == "bfloat16"
  ids = hh.prompt_ids(restored.tokenizer)
  diff = hh.per_position_diff(hh.hf_logits(hh.hf_load(tmp_path / "bf16"), ids),
                              hh.pregate_logits(restored.model, ids))
  assert diff.max() < hh.TOL, diff


def test_model_card_states_the_training_record(exports):
  _, hf_dir = exports["llama-untied"]
  from models.params import count_params
  card = (hf_dir / "README.md").read_text()
  p = hh.card_provenance()
  n = count_params(hh.model_config("llama", False)).total
  for needle in ("library_name: transformers", "LlamaForCausalLM",
                 "**BYPASSED** with --force_under_provisioned (under_provisioned zone)",
                 "planned D/N = 4.50 < 20", f"Parameters N = {n:,}", "Tokens seen D = 123,456",
                 f"D/N = {123_456 * 100 // n // 100}.{123_456 * 100 // n % 100:02d}",
                 "2.2500 nats/token", f"{2.25 / np.log(2):.4f} bits per token",
                 "bits per character", "source sha256 " + p["data"]["source_sha256"],
                 "jax 0.10.2", "flax 0.12.8", "pregate git commit: 0123abcd", "safetensors ",
                 "## Intended use"):
    assert needle in card, f"{needle!r} not in card:\n{card}"


def _cli(*args: str) -> helpers.Result:
  return helpers.command("train.cli.export", *args)


def test_export_refuses_a_checkpoint_the_card_cannot_describe(tmp_path):
  """An imported/stamped-like checkpoint (no gate, tokens, val loss, data): one line, the fix,
  nothing written; --allow_incomplete_card states each as unknown."""
  provenance = {k: v for k, v in hh.card_provenance().items()
                if k not in ("gate", "tokens_seen", "val_loss", "data")}
  ckpt = hh.make_checkpoint(tmp_path / "run", hh.model_config("llama", True),
                            provenance=provenance)
  res = _cli(f"--checkpoint={ckpt}", f"--out={tmp_path / 'hf'}")
  line = helpers.assert_one_line_error(res, "ModelCardError", "gate verdict", "tokens_seen",
                                       "val_loss", "data fingerprint", "--allow_incomplete_card",
                                       f"--init={ckpt}")
  assert "libraries" not in line and not (tmp_path / "hf").exists()
  assert [p.name for p in tmp_path.iterdir()] == ["run"]
  res = _cli(f"--checkpoint={ckpt}", f"--out={tmp_path / 'hf'}", "--allow_incomplete_card")
  assert res.rc == 0, res.stderr
  card = (tmp_path / "hf" / "README.md").read_text()
  assert card.count("unknown (not recorded in the checkpoint)") >= 4, card


def test_export_never_overwrites(exports, tmp_path):
  ckpt, _ = exports["llama-tied"]
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  res = _cli(f"--checkpoint={ckpt}", f"--out={tmp_path / 'out'}")
  helpers.assert_one_line_error(res, "ConfigError", "not an empty directory")
  assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_model_card_states_the_v12_verdict_on_effective_tokens():
  """Contract v1.2 decides on D' (repeats at their worth): the card says so, with D/N and the
  epochs per source beside it, and names the rules a bypass skipped."""
  from train.hf.model_card import _verdict
  gate = {"n_params": 152_064, "tokens": 3_481_600, "ratio": 22.8956, "zone": "COMPUTE_OPTIMAL",
          "passed": True, "bypassed": False, "floor_ratio": 20, "contract": "chinchilla-gate",
          "contract_version": "1.2.0", "effective_ratio_text": "21.65",
          "sources": [{"name": "tinyshakespeare.txt", "epochs": 3.4682}]}
  assert _verdict(gate) == (
      "passed (COMPUTE_OPTIMAL zone): effective D'/N = 21.65 >= 20 (planned D/N = 22.89; "
      "tinyshakespeare.txt 3.47 epochs) (contract chinchilla-gate v1.2.0)")
  bypassed = dict(gate, passed=False, bypassed=True, zone="UNDER_PROVISIONED",
                  effective_ratio_text="12.40", bypassed_rules=["effective_floor"])
  assert _verdict(bypassed).startswith(
      "**BYPASSED** with --force_under_provisioned (UNDER_PROVISIONED zone): effective D'/N = "
      "12.40 < 20 (planned D/N = 22.89; tinyshakespeare.txt 3.47 epochs); rules bypassed: "
      "effective_floor; this model is under-trained")
