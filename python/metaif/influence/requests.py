"""Checks of what a user asks the analyzer about: task positions, ``(position, index)`` instance
pairs and the total-Hessian variant, each turned into the form the computers use or refused with
an error that names the argument."""

from __future__ import annotations

import torch

from .config import DIRECT, VARIANTS

__all__ = ["instance_pairs", "mask", "task_positions", "variant_name"]


def instance_pairs(items, name: str, tasks: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """``(position, index)`` pairs as ``[k, 2]`` on ``device``, range-checked (no negative indexing)."""
    out = torch.as_tensor(items, dtype=torch.int64, device="cpu").reshape(-1, 2)
    if out.numel() == 0:
        raise ValueError(f"{name}: give at least one (task position, index) pair")
    bad = (out[:, 0] < 0) | (out[:, 0] >= tasks) | (out[:, 1] < 0) | (out[:, 1] >= width)
    if bool(bad.any()):
        raise ValueError(f"{name}: {tuple(out[bad][0].tolist())} is out of range; positions lie in [0, {tasks}) "
                         f"and indices in [0, {width})")
    return out.to(device)


def task_positions(positions, count: int, name: str = "positions", device: torch.device | None = None) -> torch.Tensor:
    """Task positions as a flat ``[k]`` tensor on ``device`` (all ``count`` tasks when None), range-checked."""
    if positions is None:
        return torch.arange(count, device=device)
    out = torch.as_tensor(list(positions) if not torch.is_tensor(positions) else positions, dtype=torch.int64,
                          device="cpu").flatten()
    bad = (out < 0) | (out >= count)
    if bool(bad.any()):
        raise ValueError(f"{name}: {int(out[bad][0])} is out of range; task positions lie in [0, {count})")
    return out.to(device)


def mask(items: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """1 at the ``(position, index)`` pairs of ``items [k, 2]``, 0 elsewhere, shaped like ``like``."""
    out = torch.zeros_like(like)
    out[items[:, 0], items[:, 1]] = 1.0
    return out


def variant_name(variant: str, allow_direct: bool = False) -> str:
    """``variant`` checked against the total-Hessian variants (and "direct" where it is allowed)."""
    if variant == DIRECT and not allow_direct:
        raise ValueError("variant 'direct' is the direct-IF baseline (theta held fixed): use direct_influence, "
                         "direct_val_influence or direct_scores")
    choices = (*VARIANTS, DIRECT) if allow_direct else VARIANTS
    if variant not in choices:
        raise ValueError(f"variant must be one of {', '.join(choices)}, got {variant!r}")
    return variant
