"""Power iteration: the largest-magnitude eigenvalue of a symmetric operator (Neumann's scale)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["power_iteration"]


def power_iteration(matvec: Callable[[torch.Tensor], torch.Tensor], size: int, like: torch.Tensor,
                    iters: int = 20, seed: int = 0) -> float:
    """Rayleigh quotient after ``iters`` power steps from a seeded random start: an estimate (from
    below, in magnitude) of the eigenvalue of largest magnitude. ``matvec`` maps ``[1, size]``."""
    x = torch.randn(1, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, device="cpu")
    x = x.to(dtype=like.dtype, device=like.device)
    estimate = 0.0
    for _ in range(iters):
        norm = float(x.norm())
        if not norm > 0:  # the operator annihilated the iterate: its top eigenvalue is 0 here
            return 0.0
        x = x / norm
        y = matvec(x)
        estimate = float((x.double() * y.double()).sum())
        x = y
    return estimate
