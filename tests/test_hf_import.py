"""Import: a `transformers` model built in the test (random weights, save_pretrained) -> a
validated pregate checkpoint whose logits equal transformers' at every position; export ->
import -> export is bit-identical; everything pregate cannot represent is refused with one
line naming it, and nothing is written."""
from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import helpers
import hf_helpers as hh

pytestmark = pytest.mark.hf


torch = pytest.importorskip("torch")


def _hf_model(family: str, tied: bool, seed: int = 0):
  """A transformers model from a config, every weight random (biases, norms included)."""
  import transformers
  cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
  config = cls(vocab_size=65, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               rms_norm_eps=1e-5, rope_theta=500.0, tie_word_embeddings=tied,
               bos_token_id=None, eos_token_id=None, pad_token_id=None)
  model = transformers.AutoModelForCausalLM.from_config(config)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      base = 1.0 if name.endswith("norm.weight") else 0.0
      p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _save(model, path: Path) -> Path:
  from train.hf import tokenizer_json
  model.save_pretrained(str(path))
  tokenizer_json.write(hh.char_tokenizer(), str(path), 64)
  return path


@pytest.mark.parametrize("family,tied", hh.CASES, ids=hh.IDS)
def test_transformers_model_imports_with_equal_logits(family, tied, tmp_path):
  from train.hf.importer import import_hf
  from train.restore import load_for_eval
  model = _hf_model(family, tied)
  hf_dir = _save(model, tmp_path / "hf")
  assert ("lm_head.weight" in json.dumps(_header_names(hf_dir))) != tied
  lines = import_hf(str(hf_dir), str(tmp_path / "pregate"))
  assert "validated" in lines[1], lines
  restored = load_for_eval(str(tmp_path / "pregate"))
  cfg = restored.model.cfg
  assert (cfg.family, cfg.qkv_bias, cfg.tie_embeddings, cfg.n_kv_heads) == (
      family, family == "qwen2", tied, 2)
  assert restored.meta.architecture["hf_class"] == type(model).__name__
  ids = hh.prompt_ids(restored.tokenizer)
  diff = hh.per_position_diff(hh.hf_logits(model, ids), hh.pregate_logits(restored.model, ids))
  assert len(diff) >= 16 and diff.max() < hh.TOL, diff


def _header_names(hf_dir: Path) -> list[str]:
  from safetensors import safe_open
  with safe_open(str(hf_dir / "model.safetensors"), framework="numpy") as f:
    return list(f.keys())


@pytest.mark.parametrize("family,tied", hh.CASES, ids=hh.IDS)
def test_export_import_export_is_bit_identical(family, tied, tmp_path):
  from train.hf.export import export
  from train.hf.importer import import_hf
  ckpt = hh.make_checkpoint(tmp_path / "run", hh.model_config(family, tied))
  export(str(ckpt), str(tmp_path / "a"))
  import_hf(str(tmp_path / "a"), str(tmp_path / "imported"))
  export(str(tmp_path / "imported"), str(tmp_path / "b"))
  files = sorted(p.name for p in (tmp_path / "a").iterdir())
  assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
  match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files,
                                             shallow=False)
  assert match == files and not mismatch and not errors, (mismatch, errors)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
  """A valid untied Llama directory that each refusal case copies and breaks."""
  return _save(_hf_model("llama", False), tmp_path_factory.mktemp("base") / "hf")


def _config(**changes):
  def edit(d: Path):
    path = d / "config.json"
    c = json.loads(path.read_text())
    c.update(changes)
    path.write_text(json.dumps(c))
  return edit


def _tensors(edit_fn):
  def edit(d: Path):
    from safetensors.numpy import load_file, save_file
    t = load_file(str(d / "model.safetensors"))
    edit_fn(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})
  return edit


def _add(name: str, shape: tuple[int, ...], dtype=np.float32):
  return _tensors(lambda t: t.__setitem__(name, np.zeros(shape, dtype)))


L0 = "model.layers.0"
REFUSALS = {
    "rope_scaling": (_config(rope_scaling={"rope_type": "linear", "factor": 2.0}),
                     "rope_scaling="),
    "rope_type": (_config(rope_parameters={"rope_type": "llama3", "rope_theta": 500.0,
                                           "factor": 8.0}), "rope_parameters.rope_type='llama3'"),
    "rope_theta_forms_disagree": (_config(rope_theta=10000.0), "rope_theta=10000.0"),
    "head_dim": (_config(head_dim=16), "head_dim=16"),
    "q_k_norms": (_add(f"{L0}.self_attn.q_norm.weight", (8,)), "q/k norms are not supported"),
    "qk_norm_flag": (_config(use_qk_norm=True), "use_qk_norm=True"),
    "mlp_bias_flag": (_config(mlp_bias=True), "mlp_bias=True"),
    "mlp_bias_tensor": (_add(f"{L0}.mlp.up_proj.bias", (64,)), "MLP biases are not supported"),
    "attention_bias_flag": (_config(attention_bias=True), "attention_bias=True"),
    "o_proj_bias_tensor": (_add(f"{L0}.self_attn.o_proj.bias", (32,)),
                           "o_proj biases are not supported"),
    "lm_head_bias_tensor": (_add("lm_head.bias", (65,)), "lm_head bias is not supported"),
    "qkv_bias_on_llama": (_add(f"{L0}.self_attn.q_proj.bias", (32,)),
                          "q/k/v biases need model_type qwen2"),
    "sliding_window": (_config(use_sliding_window=True, sliding_window=16),
                       "use_sliding_window=True"),
    "layer_types": (_config(layer_types=["sliding_attention", "full_attention"]), "layer_types="),
    "activation": (_config(hidden_act="gelu"), "hidden_act='gelu'"),
    "architecture": (_config(architectures=["Qwen3ForCausalLM"], model_type="qwen3"),
                     "architectures=['Qwen3ForCausalLM']"),
    "missing_tensor": (_tensors(lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
                       "missing tensor(s) model.layers.1.mlp.up_proj.weight"),
    "qwen2_without_biases": (_config(architectures=["Qwen2ForCausalLM"], model_type="qwen2"),
                             "missing tensor(s) model.layers.0.self_attn.k_proj.bias"),
    "extra_tensor": (_add("model.vision_tower.weight", (3,)),
                     "unexpected tensor(s) model.vision_tower.weight"),
    "shape": (_tensors(lambda t: t.update({f"{L0}.mlp.up_proj.weight": np.zeros((48, 32),
                                                                              np.float32)})),
              ("tensor model.layers.0.mlp.up_proj.weight has shape [48, 32] but config.json "
               "implies [64, 32]")),
    "dtype": (_tensors(lambda t: t.update({"model.norm.weight": t["model.norm.weight"]
                                           .astype(np.float16)})),
              "tensor model.norm.weight is float16 but the checkpoint's dtype is float32"),
    "config_dtype": (_config(dtype="float8_e4m3fn"), "dtype='float8_e4m3fn'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_unsupported_field_refused_in_one_line(base_dir, tmp_path, case):
  """import_hf refuses, and so does the header-only `check` (what a pre-compile check runs),
  with the same line."""
  from train.hf.importer import check, import_hf
  from train.hf.weights import HFConversionError
  edit, needle = REFUSALS[case]
  broken = Path(shutil.copytree(base_dir, tmp_path / "hf"))
  edit(broken)
  with pytest.raises(HFConversionError) as e:
    import_hf(str(broken), str(tmp_path / "out"))
  message = str(e.value)
  assert "\n" not in message and needle in message, message
  assert not (tmp_path / "out").exists()
  with pytest.raises(HFConversionError) as pre:
    check(str(broken))
  assert str(pre.value) == message


def test_tied_checkpoint_may_store_an_identical_lm_head(tmp_path):
  from safetensors.numpy import load_file, save_file

  from train.hf.importer import check, import_hf
  from train.hf.weights import HFConversionError
  hf_dir = _save(_hf_model("qwen2", True), tmp_path / "hf")
  tensors = load_file(str(hf_dir / "model.safetensors"))
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
  save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
  assert check(str(hf_dir)).tie_embeddings
  import_hf(str(hf_dir), str(tmp_path / "ok"))
  tensors["lm_head.weight"][0, 0] += 1.0
  save_file(tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(HFConversionError, match="lm_head.weight differs"):
    import_hf(str(hf_dir), str(tmp_path / "bad"))


def test_cli_refusal_is_one_line_and_writes_nothing(base_dir, tmp_path):
  broken = Path(shutil.copytree(base_dir, tmp_path / "hf"))
  _config(hidden_act="relu")(broken)
  res = helpers.command("train.cli.import_hf", f"--hf_dir={broken}", f"--out={tmp_path / 'out'}")
  helpers.assert_one_line_error(res, "HFConversionError", "hidden_act='relu'", "SiLU")
  assert not (tmp_path / "out").exists()


def test_imported_checkpoint_is_stamped_and_inspectable(base_dir, tmp_path):
  """The CLI's checkpoint: architecture identity full marks, tokenizer embedded, arrays read;
  what a foreign model cannot know is reported as missing, not invented."""
  from train.cli import inspect_ckpt as inspect
  proc = helpers.run_module("train.cli.import_hf", f"--hf_dir={base_dir}",
                            f"--out={tmp_path / 'w'}")
  assert proc.returncode == 0, proc.stderr
  assert "training provenance unknown (not a pregate export)" in proc.stdout
  q = json.loads(inspect.report(str(tmp_path / "w"), as_json=True, with_quality=True))
  meta, subs = q["metadata"], q["quality"]["subscores"]
  assert meta["imported_from"]["dir"] == str(base_dir) and meta["step"] == 0
  assert subs["identity"]["score"] == 10 and subs["tokenizer"]["score"] == 15
  assert subs["signature"]["score"] == 20 and subs["model_config"]["score"] == 25
  lost = " | ".join(x["reason"] for x in subs["training_provenance"]["lost"])
  assert "tokens_seen is None" in lost and "gate is None" in lost, lost


def test_bpe_model_exports_imports_and_round_trips(tmp_path):
  """A checkpoint with a byte-level BPE (trained here, end-of-text id 0): the export's
  AutoTokenizer encodes the corpus to pregate's ids, transformers' logits match at every
  position, and export -> import -> export is bit-identical with the same tokenizer."""
  from transformers import AutoTokenizer

  from train.ckpt.restore import load_for_eval
  from train.data import bpe
  from train.hf.export import export
  from train.hf.importer import import_hf
  tok = bpe.train(hh.corpus().split("\n\n"), 300, "<|endoftext|>")
  cfg = hh.model_config("qwen2", False, vocab_size=tok.vocab_size)
  ckpt = hh.make_checkpoint(tmp_path / "run", cfg, tokenizer=tok)
  export(str(ckpt), str(tmp_path / "a"))
  text = hh.corpus()[:20_000]
  hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "a"))
  np.testing.assert_array_equal(hf_tok(text)["input_ids"], tok.encode(text))
  assert hf_tok.eos_token_id == tok.eos_id == 0
  config = json.loads((tmp_path / "a" / "config.json").read_text())
  assert config["eos_token_id"] == 0 and config["vocab_size"] == tok.vocab_size
  assert "end-of-text token `<|endoftext|>` (id 0, the EOS)" in (tmp_path / "a" /
                                                               "README.md").read_text()
  ids = tok.encode(hh.corpus()[1000:1200])[:40]
  ours = hh.pregate_logits(load_for_eval(str(ckpt)).model, ids)
  theirs = hh.hf_logits(hh.hf_load(tmp_path / "a"), ids)
  assert len(ids) >= 16 and hh.per_position_diff(ours, theirs).max() < 1e-4
  import_hf(str(tmp_path / "a"), str(tmp_path / "imported"))
  assert load_for_eval(str(tmp_path / "imported")).tokenizer == tok
  export(str(tmp_path / "imported"), str(tmp_path / "b"))
  files = sorted(p.name for p in (tmp_path / "a").iterdir())
  match, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files,
                                             shallow=False)
  assert match == files and not mismatch and not errors, (mismatch, errors)
