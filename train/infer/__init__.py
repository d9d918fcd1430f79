"""Using a trained model: generation (KV-cached sampling) and scoring (loss, perplexity, bits).
May import train.ckpt (to restore), train.data, train.state, gates/, models/ and core/."""
