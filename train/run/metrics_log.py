"""`WORKDIR/metrics.jsonl`: one JSON object per line, the gate verdict always first in a run."""
from __future__ import annotations

import json
import time
from typing import Any, Callable

from gates.chinchilla import Verdict


class MetricsLog:
  """Append-only JSON-lines log; only process 0 writes (enabled=False elsewhere)."""

  def __init__(self, path: str, enabled: bool = True,
               on_write: Callable[[dict[str, Any]], None] | None = None):
    self.path = path
    self._f = open(path, "a", buffering=1) if enabled else None
    self._on_write = on_write  # a seam for tests (e.g. slow the run down after each record)

  def write(self, record: dict[str, Any]) -> None:
    if self._f is not None:
      self._f.write(json.dumps({"time": time.time(), **record}) + "\n")
    if self._on_write is not None:
      self._on_write(record)

  def write_gate(self, verdict: Verdict) -> None:
    """The run's first line: the Chinchilla verdict, bypassed or not."""
    self.write({"event": "gate", **verdict.to_dict()})

  def close(self) -> None:
    if self._f is not None:
      self._f.close()
      self._f = None


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_line(r: dict[str, Any]) -> str:
  """The one log line per `log_every` steps."""
  val = "-" if r.get("val_loss") is None else f"{r['val_loss']:.4f}"
  terms = f" (ce {r['ce']:.4f}, kl {r['kl']:.4f})" if "kl" in r else ""  # distilling
  return (f"step {r['step']}/{r['train_steps']} | loss {r['loss']:.4f}{terms} | val {val} | "
          f"{r['tokens_per_s']:,.0f} tok/s | {r['model_tflops'] * 1e3:.1f} GFLOP/s | "
          f"MFU {100 * r['mfu']:.1f}% | elapsed {_duration(r['elapsed_s'])} | "
          f"ETA {_duration(r['eta_s'])}")
