"""Reports computed from a run's metrics.jsonl alone: plots and the end-of-run summary."""
