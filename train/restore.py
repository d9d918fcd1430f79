"""The documented Python API for evaluation: `from train.restore import load_for_eval`."""
from train.ckpt.restore import Restored, load_for_eval

__all__ = ["Restored", "load_for_eval"]
