"""Small predicates every layer's validation uses, written once."""
from __future__ import annotations

import numbers
from typing import Any


def is_int(value: Any, low: float = float("-inf")) -> bool:
  """An integer (numpy ints too) >= low; bool is not an integer here (True is not a count)."""
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= low)


def is_number(value: Any) -> bool:
  """An int or float that is not a bool."""
  return isinstance(value, (numbers.Integral, float)) and not isinstance(value, bool)


def first_line(err: BaseException, limit: int = 300) -> str:
  """An exception's first message line (libraries append pages of context), or its type."""
  text = str(err)
  return text.splitlines()[0][:limit] if text.strip() else type(err).__name__
