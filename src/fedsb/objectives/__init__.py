"""Training objectives: how a batch is built, what the loss is, how a model is evaluated."""
