"""Checkpoints: orbax I/O, the metadata schema, step specs, validated resume and warm start,
and `load_for_eval`. May import core/, models/, gates/, train.state and train.data."""
