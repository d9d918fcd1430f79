"""Packed documents kept apart: which positions of a training window start a document, and the
segment ids and per-document positions the model masks attention and restarts RoPE with.

A window of packed tokens holds the tail of one document, then whole documents, then the head
of another, each ended by the end-of-text id where the tokenizer has one. A document start is a
position whose absolute offset is in the split's `S_offsets` array (train/data/store.py); the
window's first position always starts a segment. Segment ids count the starts from 0 within
the window and positions count from each start, so both depend on the window alone and batch i
stays a pure function of (seed, i). The end-of-text token belongs to the document it ends, so
its target (the next document's first token) is kept: the model learns what begins a document
after an end-of-text, which is what it is asked at generation time (docs/decisions.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from models.transformer import POSITIONS, SEGMENT_IDS


@dataclasses.dataclass(frozen=True)
class Packing:
  """How a run treats packed documents (data.document_masking / data.document_positions as
  resolved for its data): `mask`, attention only within a document; `positions`, RoPE
  positions restart at each document (only with `mask`)."""
  mask: bool = False
  positions: bool = False

  def keys(self) -> tuple[str, ...]:
    """The batch arrays beside inputs and targets this packing adds."""
    return ((SEGMENT_IDS,) if self.mask else ()) + ((POSITIONS,) if self.positions else ())

  def to_json(self) -> dict[str, bool]:
    return {"document_masking": self.mask, "document_positions": self.positions}

  @classmethod
  def from_json(cls, raw: Mapping[str, Any] | None) -> Packing:
    """A record's packing; none recorded (older records, single-document data) is off."""
    raw = raw or {}
    return cls(bool(raw.get("document_masking")), bool(raw.get("document_positions")))


PLAIN = Packing()  # no masking: the plain causal program


def resolve(masking: bool | None, positions: bool | None,
            documents: Callable[[], int]) -> Packing:
  """The packing of a run whose training split holds `documents()` documents (counted only
  when masking is None, since counting reads the split's offsets): masking None is on exactly
  when there is more than one (a single-document corpus such as the char experiments' runs
  the plain causal program); positions None follows masking."""
  mask = documents() > 1 if masking is None else bool(masking)
  return Packing(mask, mask and (positions is None or bool(positions)))


def starts_in(offsets: np.ndarray, window_starts: np.ndarray, length: int) -> np.ndarray:
  """bool [n, length]: which positions of the windows tokens[s : s + length] start a document
  (`offsets`: sorted document starts, as stored); position 0 always starts a segment."""
  index = np.asarray(window_starts, np.int64)[:, None] + np.arange(length, dtype=np.int64)
  at = np.minimum(np.searchsorted(offsets, index), len(offsets) - 1)
  starts = offsets[at] == index
  starts[:, 0] = True
  return starts


def segments(starts: np.ndarray, packing: Packing) -> dict[str, np.ndarray]:
  """The batch arrays of `packing` from a [n, length] document-start mask: segment ids
  (0, 1, ... within each window) and positions counted from each segment's first token."""
  out: dict[str, np.ndarray] = {}
  if packing.mask:
    out[SEGMENT_IDS] = (np.cumsum(starts, axis=1) - 1).astype(np.int32)
  if packing.positions:
    t = np.arange(starts.shape[1], dtype=np.int64)
    first = np.maximum.accumulate(np.where(starts, t, 0), axis=1)
    out[POSITIONS] = (t - first).astype(np.int32)
  return out


def report(segment_ids: np.ndarray) -> dict[str, float]:
  """Documents per window and the share of causal attention pairs (query, key <= query) that
  masking removes, over [n, T] segment ids."""
  n, t = segment_ids.shape
  causal = n * t * (t + 1) / 2
  kept = 0.0
  for row in segment_ids:
    lengths = np.bincount(row).astype(np.float64)
    kept += float(np.sum(lengths * (lengths + 1) / 2))
  return {"documents_per_window": float(np.mean(segment_ids.max(axis=1) + 1)),
          "masked_pair_share": 1.0 - kept / causal}


def report_line(packing: Packing, figures: Mapping[str, float] | None) -> str:
  """The start-up and plan line about packed documents."""
  if not packing.mask:
    return ("packing: plain causal attention across packed documents "
            "(data.document_masking off)")
  return (f"packing: document masking on, positions "
          f"{'restart per document' if packing.positions else 'run on across documents'}; "
          f"{figures['documents_per_window']:.2f} documents per window, "
          f"{100 * figures['masked_pair_share']:.1f}% of causal attention pairs masked")
