"""pregate's tokenizers as Hugging Face `tokenizer.json` + `tokenizer_config.json`, and back.

char and byte are written as plain JSON in the `tokenizers` 1.0 serialization (no tokenizer
library needed); the tests load every kind with `AutoTokenizer` and compare ids on the bundled
corpus.
  char: WordLevel over the sorted characters (id = pregate's id), a pre-tokenizer that isolates
        every character (newlines included) and a Fuse decoder (no spaces put back).
  byte: byte-level BPE with no merges: GPT-2's byte -> printable-character table with
        id = the byte value, ByteLevel pre-tokenizer and decoder.
  bpe:  the `tokenizers` JSON pregate trained or was given, written as is (it already is one).
An end-of-text token, where the tokenizer has one, is a special added token at pregate's id and
the `eos_token`; without one BOS/EOS/PAD are null. Reading accepts the char and byte shapes
(strictly: same ids) and any other `tokenizers` JSON whose `tokenizer_config.json` names its
end-of-text token (`eos_token`), which becomes a pregate bpe tokenizer.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

from core.errors import DataError
from train.data.tokenizer import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer
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


def _base(pre_tokenizer: dict, decoder: dict, model: dict, eot: str | None,
          eos_id: int | None) -> dict[str, Any]:
  added = [] if eot is None else [{"id": eos_id, "content": eot, "single_word": False,
                                   "lstrip": False, "rstrip": False, "normalized": False,
                                   "special": True}]
  return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": None,
          "decoder": decoder, "model": model}


def _eot(tok: Tokenizer) -> str | None:
  return tok.to_json().get("eot")


def tokenizer_json(tok: Tokenizer) -> dict[str, Any]:
  """The `tokenizer.json` object encoding exactly like `tok`."""
  eot, eos = _eot(tok), tok.eos_id
  if isinstance(tok, HFTokenizer):
    return tok.to_json()["tokenizer"]
  if isinstance(tok, CharTokenizer):
    vocab = {c: i for i, c in enumerate(tok.vocab)} | ({} if eot is None else {eot: eos})
    return _base({"type": "Split", "pattern": {"Regex": CHAR_SPLIT}, "behavior": "Isolated",
                  "invert": False}, {"type": "Fuse"},
                 {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}, eot, eos)
  if isinstance(tok, ByteTokenizer):
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    vocab = {c: b for b, c in enumerate(byte_to_unicode())} | ({} if eot is None else {eot: eos})
    return _base({"type": "ByteLevel", **byte_level}, {"type": "ByteLevel", **byte_level},
                 {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []}, eot, eos)
  raise HFConversionError(f"the {tok.to_json()['type']} tokenizer has no Hugging Face export; "
                          f"export a checkpoint trained with a char, byte or bpe tokenizer")


def tokenizer_config(tok: Tokenizer, max_len: int) -> dict[str, Any]:
  """`tokenizer_config.json`: the fast tokenizer class; the end-of-text token (if any) as EOS,
  nothing added around the text (pregate adds no BOS/EOS when encoding)."""
  return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
          "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
          "bos_token": None, "eos_token": _eot(tok), "pad_token": None, "unk_token": None}


def write(tok: Tokenizer, out_dir: str, max_len: int) -> list[str]:
  """Write both files into out_dir; returns their names."""
  for name, obj in zip(FILES, (tokenizer_json(tok), tokenizer_config(tok, max_len))):
    with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, ensure_ascii=False)
      f.write("\n")
  return list(FILES)


def _eos_token(hf_dir: str) -> str | None:
  """tokenizer_config.json's eos_token (a string or an AddedToken dict), None if absent."""
  path = os.path.join(hf_dir, "tokenizer_config.json")
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      eos = json.load(f).get("eos_token")
  except (OSError, ValueError, AttributeError) as e:
    raise HFConversionError(f"{path} is not a JSON object ({e}); re-save the tokenizer with "
                            f"save_pretrained") from None
  eos = eos.get("content") if isinstance(eos, dict) else eos
  if eos is not None and (not isinstance(eos, str) or not eos):
    raise HFConversionError(f"{path}: eos_token {eos!r} is not a token string; fix it there")
  return eos


def _native(obj: dict[str, Any], eot: str | None, path: str) -> Tokenizer | None:
  """pregate's own char or byte tokenizer if `obj` is exactly the layout `tokenizer_json`
  writes for it (same ids, same pre-tokenization, only the end-of-text token added)."""
  model, pre = obj["model"], obj.get("pre_tokenizer") or {}
  added = obj.get("added_tokens") or []
  if obj.get("normalizer") or obj.get("post_processor") or len(added) > (eot is not None):
    return None
  if added and (added[0].get("content") != eot or not added[0].get("special")):
    return None
  vocab = sorted((model.get("vocab") or {}).items(), key=lambda kv: kv[1])
  if eot is not None:
    if not vocab or vocab[-1][0] != eot or not added or added[0].get("id") != vocab[-1][1]:
      return None
    vocab = vocab[:-1]
  ids_in_order = [i for _, i in vocab] == list(range(len(vocab)))
  if model.get("type") == "WordLevel" and pre.get("type") == "Split" and \
      pre.get("pattern") == {"Regex": CHAR_SPLIT} and pre.get("behavior") == "Isolated":
    chars = "".join(c for c, _ in vocab)
    if ids_in_order and all(len(c) == 1 for c, _ in vocab) and chars == "".join(sorted(chars)):
      return CharTokenizer(chars, eot)
    if eot is None:
      raise HFConversionError(f"{path}: a character vocabulary whose ids are not the sorted "
                              f"characters 0..n-1 (pregate's char ids), so ids would differ")
    return None
  if model.get("type") == "BPE" and pre.get("type") == "ByteLevel" and \
      not model.get("merges") and dict(vocab) == {c: b for b, c in enumerate(byte_to_unicode())}:
    return ByteTokenizer(eot)
  return None


def read(hf_dir: str) -> Tokenizer:
  """The pregate tokenizer that encodes like a Hugging Face dir's tokenizer.json: pregate's own
  char or byte tokenizer when the file is exactly that layout, else the `tokenizers` JSON
  itself (kind bpe) with tokenizer_config.json's eos_token as its end-of-text token."""
  path = os.path.join(hf_dir, "tokenizer.json")
  if not os.path.exists(path):
    raise HFConversionError(f"{hf_dir} has no tokenizer.json; pass the pregate tokenizer to "
                            f"embed (--tokenizer=byte, or --tokenizer=char with --corpus)")
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
    kind = obj["model"].get("type")
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise HFConversionError(f"{path} is not a tokenizers JSON file ({e})") from None
  eot = _eos_token(hf_dir)
  native = _native(obj, eot, path)
  if native is not None:
    return native
  if eot is None:
    raise HFConversionError(f"{path} is a {kind} tokenizer that is not pregate's char or byte "
                            f"layout, and tokenizer_config.json names no eos_token; pregate "
                            f"embeds such a tokenizer with its end-of-text token: set eos_token")
  try:
    return HFTokenizer(obj, eot)
  except DataError as e:
    raise HFConversionError(f"{path}: {e}") from None
