"""Training: the loop, EMA, crash-safe checkpoints."""
