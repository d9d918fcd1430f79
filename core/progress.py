"""Progress of long non-loop work (data preparation, export, checkpoint verification): a tqdm
bar (amount done, rate, ETA) on a terminal, a plain log line every `every_s` seconds otherwise
(logs and CI keep no carriage returns), and one at the end."""
from __future__ import annotations

import sys
import time
from typing import IO

from absl import logging

EVERY_S = 10.0  # seconds between plain lines off a terminal


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
  """`update(n, tokens)` as work completes; `total` and n count `unit`s (0 = unknown)."""

  def __init__(self, desc: str, total: int, *, unit: str = "B", stream: IO[str] | None = None,
               every_s: float | None = None, enabled: bool = True):
    every_s = EVERY_S if every_s is None else every_s
    self.desc, self.total, self.every_s, self.unit = desc, int(total), every_s, unit
    self._lines = 0  # plain lines logged so far
    self.done = self.tokens = 0
    self._t0 = self._last = time.perf_counter()
    stream = stream or sys.stderr
    self._bar = None
    self._enabled = enabled
    if enabled and getattr(stream, "isatty", lambda: False)():
      from tqdm import tqdm
      self._bar = tqdm(total=self.total or None, desc=desc, unit=unit, unit_scale=True,
                       file=stream, dynamic_ncols=True, leave=False,
                       mininterval=min(every_s, 0.5))

  def update(self, n: int, n_tokens: int = 0) -> None:
    self.done += n
    self.tokens += n_tokens
    now = time.perf_counter()
    if self._bar is not None:
      if n_tokens:
        self._bar.set_postfix_str(f"{self.tokens / max(now - self._t0, 1e-9):,.0f} tok/s",
                                  refresh=False)
      self._bar.update(n)
    elif self._enabled and now - self._last >= self.every_s:
      self._last = now
      self._lines += 1
      logging.info("%s", self.line(now))

  def line(self, now: float | None = None) -> str:
    now = time.perf_counter() if now is None else now
    dt = max(now - self._t0, 1e-9)
    rate = self.done / dt
    pct = f"{100 * self.done / self.total:.0f}% " if self.total else ""
    eta = f", ETA {_eta((self.total - self.done) / rate)}" if self.total and rate else ""
    amount = (f"{pct}({self.done / 1e6:,.1f} of {self.total / 1e6:,.1f} M{self.unit})"
              if self.total else f"{self.done / 1e6:,.1f} M{self.unit}")
    speed = (f"{self.tokens:,} tokens, {self.tokens / dt:,.0f} tokens/s" if self.tokens
             else f"{rate / 1e6:,.1f} M{self.unit}/s")
    return f"{self.desc}: {amount}, {speed}{eta}"

  def close(self) -> None:
    """Ends the bar; without one, logs the final line if any was logged before (a log that
    showed "40%" also shows the end; work shorter than every_s stays silent)."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    elif self._enabled and self._lines:
      logging.info("%s", self.line())
    self._enabled = False
