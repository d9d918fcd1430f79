"""Pure decision rules (no I/O, nothing compiled): the guardrails that run before training."""
