"""pregate's char and byte tokenizers as Hugging Face `tokenizer.json` + `tokenizer_config.json`,
and back.

Written as plain JSON in the `tokenizers` 1.0 serialization, so exporting needs no tokenizer
library; the tests load the files with `AutoTokenizer` and compare ids on the bundled corpus.
  char: WordLevel over the sorted characters (id = pregate's id), a pre-tokenizer that isolates
        every character (newlines included) and a Fuse decoder (no spaces put back).
  byte: byte-level BPE with no merges: GPT-2's byte -> printable-character table with
        id = the byte value, ByteLevel pre-tokenizer and decoder.
Neither has special tokens: pregate's tokenizers have none, so BOS/EOS/PAD are null.
Reading accepts exactly these two shapes; any other tokenizer is refused with one line.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

from train.data.tokenizer import ByteTokenizer, CharTokenizer, Tokenizer
from train.hf.weights import HFConversionError

CHAR_SPLIT = r"[\s\S]"  # one match per character, newline included ("." skips newlines)
FILES = ("tokenizer.json", "tokenizer_config.json")


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> tuple[str, ...]:
  """GPT-2's table: byte b -> a printable character (printable bytes map to themselves)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return tuple(table[b] for b in range(256))


def _base(pre_tokenizer: dict, decoder: dict, model: dict) -> dict[str, Any]:
  return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
          "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": None,
          "decoder": decoder, "model": model}


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
  """The `tokenizer.json` object encoding exactly like `tok`."""
  kind = tok.to_json()["type"]
  if isinstance(tok, CharTokenizer):
    return _base({"type": "Split", "pattern": {"Regex": CHAR_SPLIT}, "behavior": "Isolated",
                  "invert": False}, {"type": "Fuse"},
                 {"type": "WordLevel", "vocab": {c: i for i, c in enumerate(tok.vocab)},
                  "unk_token": "<unk>"})
  if isinstance(tok, ByteTokenizer):
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return _base({"type": "ByteLevel", **byte_level}, {"type": "ByteLevel", **byte_level},
                 {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {c: b for b, c in enumerate(byte_to_unicode())}, "merges": []})
  raise HFConversionError(f"the {kind} tokenizer has no Hugging Face export yet; export a "
                          f"checkpoint trained with a char or byte tokenizer")


def tokenizer_config(tok: Tokenizer, max_len: int) -> dict[str, Any]:
  """`tokenizer_config.json`: the fast tokenizer class, no special tokens, nothing added."""
  del tok
  return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
          "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
          "bos_token": None, "eos_token": None, "pad_token": None, "unk_token": None,
          "added_tokens_decoder": {}}


def write(tok: Tokenizer, out_dir: str, max_len: int) -> list[str]:
  """Write both files into out_dir; returns their names."""
  for name, obj in zip(FILES, (tokenizer_json(tok), tokenizer_config(tok, max_len))):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, ensure_ascii=False)
      f.write("\n")
  return list(FILES)


def read(hf_dir: str) -> Tokenizer:
  """The pregate tokenizer a Hugging Face dir's tokenizer.json encodes like; refuses anything
  but the two shapes `tokenizer_json` writes (same ids, same pre-tokenization)."""
  path = os.path.join(hf_dir, "tokenizer.json")
  if not os.path.exists(path):
    raise HFConversionError(f"{hf_dir} has no tokenizer.json; pass the pregate tokenizer to "
                            f"embed (--tokenizer=byte, or --tokenizer=char with --corpus)")
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
    model, pre = obj["model"], obj.get("pre_tokenizer") or {}
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise HFConversionError(f"{path} is not a tokenizers JSON file ({e})") from None
  if obj.get("added_tokens") or obj.get("normalizer") or obj.get("post_processor"):
    raise HFConversionError(f"{path} has special tokens, a normalizer or a post-processor: "
                            f"not a char or byte tokenizer, which pregate cannot embed yet")
  if model.get("type") == "WordLevel" and pre.get("type") == "Split" and \
      pre.get("pattern") == {"Regex": CHAR_SPLIT} and pre.get("behavior") == "Isolated":
    vocab = sorted(model.get("vocab", {}).items(), key=lambda kv: kv[1])
    chars = "".join(c for c, _ in vocab)
    if [i for _, i in vocab] != list(range(len(vocab))) or \
        any(len(c) != 1 for c, _ in vocab) or chars != "".join(sorted(chars)):
      raise HFConversionError(f"{path}: a character vocabulary whose ids are not the sorted "
                              f"characters 0..n-1 (pregate's char ids), so ids would differ")
    return CharTokenizer(chars)
  if model.get("type") == "BPE" and pre.get("type") == "ByteLevel" and not model.get("merges") \
      and model.get("vocab") == {c: b for b, c in enumerate(byte_to_unicode())}:
    return ByteTokenizer()
  raise HFConversionError(f"{path} is a {model.get('type')} tokenizer with "
                          f"{len(model.get('vocab') or {})} entries that pregate cannot embed "
                          f"yet (char and byte only)")
