"""The compiled step of an order-independent sum (:class:`metaif.parallel.ExactSum`, which calls the
op directly: the parallel layer sits below this one)."""

from __future__ import annotations

import torch

from ._checks import check_floating, require

__all__ = ["exact_add"]

WINDOWS = 3  # limbs per element (metaif.parallel.exact.WINDOWS, include/metaif/exact.h)


def exact_add(limbs: torch.Tensor, top: torch.Tensor, x: torch.Tensor) -> None:
    """Add ``x`` into the sum held by ``limbs [3, *s]`` (int64) and ``top [*s]`` (int32 top windows),
    in place; ``x [*s]`` float32 or float64, its non-finite elements skipped (the caller keeps them).
    The same limbs as ``ExactSum``'s pure-PyTorch steps, in one pass over the elements."""
    torch.ops.metaif.exact_add(limbs, top, x)


@torch.library.register_fake("metaif::exact_add")
def _exact_add_fake(limbs, top, x):
    op = "exact_add"
    check_floating(op, "x", x)
    require(limbs.dtype == torch.int64 and top.dtype == torch.int32, op,
            f"limbs must be int64 and top int32, got {limbs.dtype} and {top.dtype}")
    require(tuple(limbs.shape) == (WINDOWS, *x.shape) and top.shape == x.shape, op,
            f"limbs must have shape [{WINDOWS}, *x.shape] and top x.shape {tuple(x.shape)}, "
            f"got {tuple(limbs.shape)} and {tuple(top.shape)}")
