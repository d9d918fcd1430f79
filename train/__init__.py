"""The training loop and its edges: data, steps, checkpoints, CLIs."""
