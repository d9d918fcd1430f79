"""Experiment configs: plain Python files whose get_config() returns a ConfigDict."""
import importlib.util

from ml_collections import ConfigDict


def load_file(path: str) -> ConfigDict:
  """get_config() of a config file given by path (what scripts take, like --config=)."""
  spec = importlib.util.spec_from_file_location("config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
