"""Batched iterative solvers of ``(A_t + damping I) x_t = b_t`` whose whole loop runs in C++.

Two operators are built in: dense per-task matrices ``a [T, q, q]`` and the softmax
cross-entropy head Hessian of :func:`metaif.ops.ce_head_hvp`. Tasks are solved one after
another with their operator in cache; each column of ``b`` converges on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ._checks import check_floating, check_like, check_shape, check_vector_only_grad, require
from .hvp import ce_head_hvp, check_ce_head

__all__ = ["CGResult", "cg_dense", "cg_ce_head", "neumann_dense", "neumann_ce_head",
           "power_iteration_scale"]


class CGResult(NamedTuple):
    """Solution ``x`` (shape of b), ``iters [T, B]`` int64, ``resid [T, B]`` the true relative residual
    ``||b - A x|| / ||b||`` and ``converged [T, B]`` (``resid <= rtol``)."""

    x: torch.Tensor
    iters: torch.Tensor
    resid: torch.Tensor
    converged: torch.Tensor


def power_iteration_scale(matvec: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor,
                          iters: int = 20, safety: float = 1.1) -> torch.Tensor:
    """Per-task Neumann scale ``safety * lambda_max`` by power iteration.

    Args:
        matvec: maps ``[T, 1, *vec]`` to ``[T, 1, *vec]`` (the damped operator).
        like: ``[T, B, *vec]`` a right-hand side; fixes shape, dtype and device.
        iters: power iterations; safety: factor on the estimate (a lower bound of lambda_max).

    Returns:
        ``[T]`` float64, positive.
    """
    tasks = like.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((tasks, 1, *like.shape[2:]), generator=gen, dtype=torch.float64).to(like)
    estimate = torch.ones(tasks, dtype=torch.float64)
    for _ in range(iters):
        norms = x.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        x = x / norms.view(-1, *([1] * (x.dim() - 1)))
        y = matvec(x)
        estimate = (x * y).flatten(1).sum(1).double().cpu()
        x = y
    return (safety * estimate.abs()).clamp_min(torch.finfo(torch.float64).tiny)


def resolve_scale(scale: torch.Tensor | float | None, matvec: Callable[[torch.Tensor], torch.Tensor],
                  b: torch.Tensor) -> torch.Tensor:
    """``[T]`` scales from a float, a tensor, or (``None``) :func:`power_iteration_scale`."""
    if scale is None:
        return power_iteration_scale(matvec, b)
    if isinstance(scale, (int, float)):
        return torch.full((b.shape[0],), float(scale), dtype=torch.float64)
    return scale


def neumann_dense(a: torch.Tensor, b: torch.Tensor, iters: int,
                  scale: torch.Tensor | float | None = None, damping: float = 0.0) -> torch.Tensor:
    """Scaled Neumann series ``x = (1/s) sum_{j<=iters} (I - (A+damping I)/s)^j b`` per task.

    Args:
        a: ``[T, q, q]`` symmetric positive definite (after damping) matrices.
        b: ``[T, B, q]`` right-hand sides.
        iters: number of series terms after the first.
        scale: ``[T]`` (or one float) above half the largest eigenvalue; ``None`` estimates
            ``1.1 * lambda_max`` by 20 power iterations.
        damping: added to the diagonal.

    Returns:
        ``[T, B, q]``. Raises if the series diverges or meets non-finite values.
        Differentiable in ``b``.
    """
    s = resolve_scale(scale, lambda v: v @ a.mT + damping * v, b)
    return torch.ops.metaif.neumann_dense(a, b, s, int(iters), float(damping))


def neumann_ce_head(feats: torch.Tensor, probs: torch.Tensor, b: torch.Tensor, iters: int,
                    scale: torch.Tensor | float | None = None, damping: float = 0.0,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`neumann_dense` for the ce-head Hessian of :func:`metaif.ops.ce_head_hvp`.

    ``b`` is ``[T, B, C, d]``; returns the same shape.
    """
    s = resolve_scale(scale, lambda v: ce_head_hvp(feats, probs, v, damping, weights), b)
    return torch.ops.metaif.neumann_ce_head(feats, probs, weights, b, s, int(iters), float(damping))


def cg_dense(a: torch.Tensor, b: torch.Tensor, damping: float = 0.0, rtol: float = 1e-6,
             maxiter: int | None = None) -> CGResult:
    """Conjugate gradient for ``(a[t] + damping I) x = b[t]``, columns converging separately.

    Args:
        a: ``[T, q, q]`` symmetric positive definite after damping (raises otherwise).
        b: ``[T, B, q]``.
        rtol: stop a column when ``||r|| <= rtol ||b||``.
        maxiter: iteration cap; ``None`` means ``q``.

    Returns:
        :class:`CGResult`; ``x`` is differentiable in ``b`` (implicitly, by a CG solve).
    """
    cap = a.shape[-1] if maxiter is None else int(maxiter)
    x, iters, resid = torch.ops.metaif.cg_dense(a, b, float(damping), float(rtol), cap)
    return CGResult(x, iters, resid, resid <= rtol)


def cg_ce_head(feats: torch.Tensor, probs: torch.Tensor, b: torch.Tensor, damping: float = 0.0,
               rtol: float = 1e-6, maxiter: int | None = None,
               weights: torch.Tensor | None = None) -> CGResult:
    """:func:`cg_dense` for the ce-head Hessian; ``b`` is ``[T, B, C, d]``; ``maxiter`` defaults to C*d."""
    cap = b.shape[-1] * b.shape[-2] if maxiter is None else int(maxiter)
    x, iters, resid = torch.ops.metaif.cg_ce_head(feats, probs, weights, b, float(damping), float(rtol), cap)
    return CGResult(x, iters, resid, resid <= rtol)


# ---- fake kernels ----------------------------------------------------------------------------

def _check_dense(op: str, a: torch.Tensor, b: torch.Tensor) -> None:
    check_floating(op, "a", a)
    check_shape(op, "a", a, (None, None, None), "[T, q, q]")
    tasks, q, q2 = a.shape
    require(q == q2, op, f"a must be square per task, [T, q, q], got {tuple(a.shape)}")
    check_like(op, "a", a, "b", b)
    check_shape(op, "b", b, (tasks, None, q), f"[T, B, q] with T={tasks}, q={q}")


def _check_scale(op: str, scale: torch.Tensor, tasks: int, iters: int) -> None:
    check_shape(op, "scale", scale, (tasks,), f"[T] = [{tasks}]")
    require(iters >= 0, op, f"iters must be >= 0, got {iters}")


def _cg_outputs(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tasks, batch = b.shape[:2]
    return (torch.empty_like(b, memory_format=torch.contiguous_format),
            b.new_empty((tasks, batch), dtype=torch.int64), b.new_empty((tasks, batch)))


@torch.library.register_fake("metaif::neumann_dense")
def _neumann_dense_fake(a, b, scale, iters, damping):
    _check_dense("neumann_dense", a, b)
    _check_scale("neumann_dense", scale, a.shape[0], iters)
    return torch.empty_like(b, memory_format=torch.contiguous_format)


@torch.library.register_fake("metaif::neumann_ce_head")
def _neumann_ce_head_fake(feats, probs, weights, b, scale, iters, damping):
    check_ce_head("neumann_ce_head", feats, probs, weights, b, "b")
    _check_scale("neumann_ce_head", scale, feats.shape[0], iters)
    return torch.empty_like(b, memory_format=torch.contiguous_format)


@torch.library.register_fake("metaif::cg_dense")
def _cg_dense_fake(a, b, damping, rtol, maxiter):
    _check_dense("cg_dense", a, b)
    require(maxiter >= 0, "cg_dense", f"maxiter must be >= 0, got {maxiter}")
    return _cg_outputs(b)


@torch.library.register_fake("metaif::cg_ce_head")
def _cg_ce_head_fake(feats, probs, weights, b, damping, rtol, maxiter):
    check_ce_head("cg_ce_head", feats, probs, weights, b, "b")
    require(maxiter >= 0, "cg_ce_head", f"maxiter must be >= 0, got {maxiter}")
    return _cg_outputs(b)


# ---- autograd: all four are linear maps of b (CG's by its fixed point, A^-1 b) ----------------

def _neumann_dense_setup(ctx, inputs, output):
    a, b, scale, iters, damping = inputs
    check_vector_only_grad("neumann_dense", "b", a=a)
    ctx.save_for_backward(a, scale)
    ctx.iters, ctx.damping = iters, damping


def _neumann_dense_backward(ctx, grad):
    a, scale = ctx.saved_tensors
    g = torch.ops.metaif.neumann_dense(a.mT, grad, scale, ctx.iters, ctx.damping)
    return None, g, None, None, None


def _neumann_ce_head_setup(ctx, inputs, output):
    feats, probs, weights, b, scale, iters, damping = inputs
    check_vector_only_grad("neumann_ce_head", "b", feats=feats, probs=probs, weights=weights)
    ctx.save_for_backward(feats, probs, weights, scale)
    ctx.iters, ctx.damping = iters, damping


def _neumann_ce_head_backward(ctx, grad):
    feats, probs, weights, scale = ctx.saved_tensors
    g = torch.ops.metaif.neumann_ce_head(feats, probs, weights, grad, scale, ctx.iters, ctx.damping)
    return None, None, None, g, None, None, None


def _cg_dense_setup(ctx, inputs, output):
    a, b, damping, rtol, maxiter = inputs
    check_vector_only_grad("cg_dense", "b", a=a)
    ctx.save_for_backward(a)
    ctx.args = (damping, rtol, maxiter)


def _cg_dense_backward(ctx, grad_x, grad_iters, grad_resid):
    (a,) = ctx.saved_tensors
    return None, torch.ops.metaif.cg_dense(a, grad_x, *ctx.args)[0], None, None, None


def _cg_ce_head_setup(ctx, inputs, output):
    feats, probs, weights, b, damping, rtol, maxiter = inputs
    check_vector_only_grad("cg_ce_head", "b", feats=feats, probs=probs, weights=weights)
    ctx.save_for_backward(feats, probs, weights)
    ctx.args = (damping, rtol, maxiter)


def _cg_ce_head_backward(ctx, grad_x, grad_iters, grad_resid):
    feats, probs, weights = ctx.saved_tensors
    g = torch.ops.metaif.cg_ce_head(feats, probs, weights, grad_x, *ctx.args)[0]
    return None, None, None, g, None, None, None


torch.library.register_autograd("metaif::neumann_dense", _neumann_dense_backward,
                                setup_context=_neumann_dense_setup)
torch.library.register_autograd("metaif::neumann_ce_head", _neumann_ce_head_backward,
                                setup_context=_neumann_ce_head_setup)
torch.library.register_autograd("metaif::cg_dense", _cg_dense_backward, setup_context=_cg_dense_setup)
torch.library.register_autograd("metaif::cg_ce_head", _cg_ce_head_backward, setup_context=_cg_ce_head_setup)
