"""Experiments on top of the influence engine: leave-one-out validation and the paper's §6."""
