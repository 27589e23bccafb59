"""The compiled steps of an order-independent sum (:class:`metaif.parallel.ExactSum`, which calls the
ops directly: the parallel layer sits below this one): adding an addend, and the rounded value."""

from __future__ import annotations

import torch

from ._checks import check_floating, require

__all__ = ["exact_add", "exact_value"]

WINDOWS = 3  # limbs per element (metaif.parallel.exact.WINDOWS, include/metaif/exact.h)


def exact_add(limbs: torch.Tensor, top: torch.Tensor, x: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Add ``x`` into the sum held by ``limbs [3, *s]`` (int64) and ``top [*s]`` (int32 top windows),
    in place; ``x [*s]`` float32 or float64, its non-finite elements skipped (the caller keeps them).
    ``rows`` (int64 ``[k]``, indices into the first dimension, repeats added as often) limits the
    addition to ``x[rows]`` into the same rows of the sum. The same limbs as ``ExactSum``'s
    pure-PyTorch steps, in one pass over the elements."""
    if rows is not None and rows.device.type != "cpu" and rows.numel() and x.dim():
        # the CPU op checks each row itself; a GPU kernel can only skip one out of range
        low, high = (int(r) for r in torch.aminmax(rows))
        bad = low if low < 0 else high
        require(0 <= low and high < x.shape[0], "exact_add",
                f"rows[{int((rows == bad).nonzero()[0])}] = {bad} is not a row of x ({x.shape[0]} rows)")
    torch.ops.metaif.exact_add(limbs, top, x, rows)


def exact_value(limbs: torch.Tensor, top: torch.Tensor, out: torch.Tensor) -> None:
    """Write the sum held by ``limbs`` and ``top`` into ``out [*s]`` (float32 or float64), rounded once;
    the limbs are carried in place (the same sum). The bits of ``ExactSum``'s pure-PyTorch value."""
    torch.ops.metaif.exact_value(limbs, top, out)


def _check_state(op: str, limbs: torch.Tensor, top: torch.Tensor, values: torch.Tensor) -> None:
    check_floating(op, "x" if op == "exact_add" else "out", values)
    require(limbs.dtype == torch.int64 and top.dtype == torch.int32, op,
            f"limbs must be int64 and top int32, got {limbs.dtype} and {top.dtype}")
    require(tuple(limbs.shape) == (WINDOWS, *values.shape) and top.shape == values.shape, op,
            f"limbs must have shape [{WINDOWS}, *values.shape] and top values.shape {tuple(values.shape)}, "
            f"got {tuple(limbs.shape)} and {tuple(top.shape)}")


@torch.library.register_fake("metaif::exact_add")
def _exact_add_fake(limbs, top, x, rows=None):
    _check_state("exact_add", limbs, top, x)
    if rows is not None:
        require(rows.dim() == 1 and rows.dtype == torch.int64, "exact_add",
                f"rows must be an int64 [count] index, got {rows.dtype} of shape {tuple(rows.shape)}")


@torch.library.register_fake("metaif::exact_value")
def _exact_value_fake(limbs, top, out):
    _check_state("exact_value", limbs, top, out)
