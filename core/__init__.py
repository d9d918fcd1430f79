"""The base layer every other package may use: typed errors with exit codes, the one CLI
harness, repository paths, atomic JSON writes and small validation helpers. Imports nothing
from pregate (stdlib and absl only)."""
