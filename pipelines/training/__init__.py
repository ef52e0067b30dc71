"""Training: the trainer, its step engine, distributed ranks, checkpoints, recipes."""
