"""A training run: preflight, the loop and its named edges, guards, the workdir record and the
metrics log. May import every lower train/ room (ckpt, state, data, runtime), gates/, models/
and core/; only train/cli/ may import it."""
