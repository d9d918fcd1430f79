"""Model definitions for pregate: the Llama-family decoder and its config."""
