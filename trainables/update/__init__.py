"""How masks become an update: the sparse-update engine, the masked optimizers, mixed precision."""
