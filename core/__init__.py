"""The base layer every other package may use: typed errors with exit codes, the one CLI
harness, repository paths, atomic JSON writes, the guardrail contracts' reader and small
validation helpers. Imports nothing from pregate (stdlib, absl and yaml only)."""
