"""Experiment configs: plain Python files whose get_config() returns a ConfigDict."""
