"""Gathered-patch products: a layer's output (cached im2col rows times weights) read only at
positions a max-pool picked, and its adjoint. They fuse the first convolution of a body with the
ReLU/max-pool after it in the hand-written second-order passes (:mod:`metaif.curvature.body`).
On CUDA an index out of range is a device-side error (as in torch's own indexing), since
reporting it would cost a synchronisation per call; the CPU kernels raise.
"""

from __future__ import annotations

import torch

from ._checks import check_device, check_floating, check_like, check_shape, check_vector_only_grad, require

__all__ = ["gather_patch_matmul", "gather_patch_matmul_t"]


def gather_patch_matmul(cols: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                        weight: torch.Tensor) -> torch.Tensor:
    """``out[n, p, c] = mask[n, p, c] * (cols[n, index[n, p, c]] @ weight[c])``.

    Args:
        cols: ``[N, L, K]`` per-image patch rows (im2col; a ones column carries a bias).
        index: ``[N, P, C]`` int64, the row of ``cols`` that output ``(p, c)`` reads.
        mask: ``[N, P, C]`` multiplier (a ReLU mask), dtype of ``cols``.
        weight: ``[C, K]``.

    Returns:
        ``[N, P, C]``. Differentiable in ``weight``.
    """
    return torch.ops.metaif.gather_patch_matmul(cols, index, mask, weight)


def gather_patch_matmul_t(cols: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                          signal: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`gather_patch_matmul` in its weight:
    ``grad[c, k] = sum_{n, p} mask[n, p, c] signal[n, p, c] cols[n, index[n, p, c], k]``, ``[C, K]``
    (accumulated in float64). Differentiable in ``signal``."""
    return torch.ops.metaif.gather_patch_matmul_t(cols, index, mask, signal)


def _check(op: str, cols, index, mask) -> None:
    check_floating(op, "cols", cols)
    check_shape(op, "cols", cols, (None, None, None), "[N, L, K]")
    check_shape(op, "index", index, (cols.shape[0], None, None), f"[N, P, C] with N={cols.shape[0]}")
    require(index.dtype == torch.int64, op, f"index must be int64, got {index.dtype}")
    check_device(op, "cols", cols, "index", index)
    check_like(op, "cols", cols, "mask", mask)
    require(mask.shape == index.shape, op, f"mask must have the shape of index {tuple(index.shape)}, got {tuple(mask.shape)}")


@torch.library.register_fake("metaif::gather_patch_matmul")
def _gather_fake(cols, index, mask, weight):
    op = "gather_patch_matmul"
    _check(op, cols, index, mask)
    check_like(op, "cols", cols, "weight", weight)
    check_shape(op, "weight", weight, (index.shape[2], cols.shape[2]), f"[C, K] = [{index.shape[2]}, {cols.shape[2]}]")
    return cols.new_empty(index.shape)


@torch.library.register_fake("metaif::gather_patch_matmul_t")
def _gather_t_fake(cols, index, mask, signal):
    op = "gather_patch_matmul_t"
    _check(op, cols, index, mask)
    check_like(op, "cols", cols, "signal", signal)
    require(signal.shape == index.shape, op,
            f"signal must have the shape of index {tuple(index.shape)}, got {tuple(signal.shape)}")
    return cols.new_empty((index.shape[2], cols.shape[2]))


# Each op is linear in its last argument and the two are adjoint: each one's backward is the other.
def _setup(name: str, vector: str):
    def setup(ctx, inputs, output):
        cols, index, mask, _ = inputs
        check_vector_only_grad(name, vector, cols=cols, mask=mask)
        ctx.save_for_backward(cols, index, mask)
    return setup


def _gather_backward(ctx, grad):
    cols, index, mask = ctx.saved_tensors
    return None, None, None, gather_patch_matmul_t(cols, index, mask, grad)


def _gather_t_backward(ctx, grad):
    cols, index, mask = ctx.saved_tensors
    return None, None, None, gather_patch_matmul(cols, index, mask, grad)


torch.library.register_autograd("metaif::gather_patch_matmul", _gather_backward,
                                setup_context=_setup("gather_patch_matmul", "weight"))
torch.library.register_autograd("metaif::gather_patch_matmul_t", _gather_t_backward,
                                setup_context=_setup("gather_patch_matmul_t", "signal"))
