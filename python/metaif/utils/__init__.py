"""Small helpers shared across layers (no torch.ops dependencies)."""
