"""Batched iterative solvers of ``(A_t + damping I) x_t = b_t`` whose whole loop runs in C++.

Two operators are built in: dense per-task matrices ``a [T, q, q]`` and the softmax
cross-entropy head Hessian of :func:`metaif.ops.ce_head_hvp` (singular without damping, so its
solvers need ``damping > 0``). Tasks are solved one after another with their operator in cache;
each column of ``b`` converges on its own.

What is detected:

* CG returns the *true* relative residual ``||b - A x|| / ||b||`` of the ``x`` it returns and a
  ``converged`` flag (``resid <= rtol``); a column whose recursive residual claims convergence is
  checked against ``b - A x``; non-positive curvature ``p.Ap <= 0`` raises.
* The Neumann series raises when its terms grow beyond rounding (an eigenvalue of ``A + damping I``
  below 0 or above ``2 * scale``: an indefinite operator or a scale too small), on non-finite
  values, and when the power-iteration estimate of the top eigenvalue is not positive (a zero or
  indefinite operator). An eigenvalue at exactly 0 or ``2 * scale`` neither grows nor converges:
  pass ``rtol`` to have the final true residual checked, which then raises.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._checks import check_floating, check_like, check_number, check_shape, check_vector_only_grad, require
from .hvp import check_ce_head

__all__ = ["CGResult", "cg_ce_head", "cg_dense", "neumann_ce_head", "neumann_dense"]


class CGResult(NamedTuple):
    """Solution ``x`` (shape of b), ``iters [T, B]`` int64, ``resid [T, B]`` the true relative residual
    ``||b - A x|| / ||b||`` and ``converged [T, B]`` (``resid <= rtol``); ``floor [T, B]`` float64,
    where a solver estimates it, the relative rounding noise of the operator's products at ``x``
    (the smallest residual this precision can show; NaN where it was not needed)."""

    x: torch.Tensor
    iters: torch.Tensor
    resid: torch.Tensor
    converged: torch.Tensor
    floor: torch.Tensor | None = None


def _scale(scale: torch.Tensor | float | None, b: torch.Tensor) -> torch.Tensor | None:
    """``[T]`` scales from a number or a tensor; ``None`` lets the kernel estimate them."""
    if scale is None or isinstance(scale, torch.Tensor):
        return scale
    return torch.full((b.shape[0],), float(scale), dtype=torch.float64, device=b.device)


def _maxiter(maxiter: int | None, op: str) -> int:
    if maxiter is None:
        return -1  # the kernel's default: the operator's dimension
    if int(maxiter) < 0:
        raise RuntimeError(f"{op}: maxiter must be >= 0, got {maxiter}")
    return int(maxiter)


def neumann_dense(a: torch.Tensor, b: torch.Tensor, iters: int, scale: torch.Tensor | float | None = None,
                  damping: float = 0.0, rtol: float | None = None) -> torch.Tensor:
    """Scaled Neumann series ``x = (1/s) sum_{j<=iters} (I - (A+damping I)/s)^j b`` per task.

    Args:
        a: ``[T, q, q]`` symmetric positive definite (after damping) matrices.
        b: ``[T, B, q]`` right-hand sides.
        iters: number of series terms after the first.
        scale: ``[T]`` (or one number) above half the largest eigenvalue; ``None`` estimates
            ``1.1 * lambda_max`` per task by 20 power iterations inside the kernel (traceable).
        damping: added to the diagonal.
        rtol: when given, the true relative residual of the result must not exceed it (raises).

    Returns:
        ``[T, B, q]``; raises on divergence, non-finite values or (with ``rtol``) a missed
        tolerance (see the module docstring). Differentiable in ``b``.
    """
    return torch.ops.metaif.neumann_dense(a, b, _scale(scale, b), int(iters), float(damping),
                                          None if rtol is None else float(rtol))


def neumann_ce_head(feats: torch.Tensor, probs: torch.Tensor, b: torch.Tensor, iters: int,
                    scale: torch.Tensor | float | None = None, damping: float = 0.01,
                    weights: torch.Tensor | None = None, rtol: float | None = None) -> torch.Tensor:
    """:func:`neumann_dense` for the ce-head Hessian of :func:`metaif.ops.ce_head_hvp` (``damping > 0``:
    the Hessian is singular). ``b`` is ``[T, B, C, d]``; returns the same shape."""
    return torch.ops.metaif.neumann_ce_head(feats, probs, weights, b, _scale(scale, b), int(iters), float(damping),
                                            None if rtol is None else float(rtol))


def cg_dense(a: torch.Tensor, b: torch.Tensor, damping: float = 0.0, rtol: float = 1e-6,
             maxiter: int | None = None) -> CGResult:
    """Conjugate gradient for ``(a[t] + damping I) x = b[t]``, columns converging separately.

    Args:
        a: ``[T, q, q]`` symmetric positive definite after damping (raises otherwise).
        b: ``[T, B, q]``.
        rtol: a column is done when its true residual ``||b - A x|| <= rtol ||b||``.
        maxiter: iteration cap; ``None`` means ``q``.

    Returns:
        :class:`CGResult` with the true residual; ``x`` is differentiable in ``b`` (implicitly, by a
        CG solve); ``iters``, ``resid`` and ``converged`` are not differentiable.
    """
    x, iters, resid = torch.ops.metaif.cg_dense(a, b, float(damping), float(rtol), _maxiter(maxiter, "cg_dense"))
    return CGResult(x, iters, resid, resid <= rtol)


def cg_ce_head(feats: torch.Tensor, probs: torch.Tensor, b: torch.Tensor, damping: float = 0.01,
               rtol: float = 1e-6, maxiter: int | None = None,
               weights: torch.Tensor | None = None) -> CGResult:
    """Conjugate gradient for the ce-head Hessian of :func:`metaif.ops.ce_head_hvp` plus ``damping I``
    (``damping > 0``: the Hessian is singular).

    Args:
        feats: ``[T, n, d]`` features (a ones column for the bias).
        probs: ``[T, n, C]`` softmax probabilities.
        b: ``[T, B, C, d]`` right-hand sides.
        damping: ``> 0``.
        rtol: a column is done when its true residual ``||b - A x|| <= rtol ||b||``.
        maxiter: iteration cap; ``None`` means ``C d``.
        weights: ``[T, n]``; ``None`` means the mean (1/n each).

    Returns:
        :class:`CGResult` (as :func:`cg_dense`), ``x`` shaped like ``b``.
    """
    x, iters, resid = torch.ops.metaif.cg_ce_head(feats, probs, weights, b, float(damping), float(rtol),
                                                  _maxiter(maxiter, "cg_ce_head"))
    return CGResult(x, iters, resid, resid <= rtol)


# ---- fake kernels ----------------------------------------------------------------------------

def _check_dense(op: str, a: torch.Tensor, b: torch.Tensor) -> None:
    check_floating(op, "a", a)
    check_shape(op, "a", a, (None, None, None), "[T, q, q]")
    tasks, q, q2 = a.shape
    require(q == q2, op, f"a must be square per task, [T, q, q], got {tuple(a.shape)}")
    check_like(op, "a", a, "b", b)
    check_shape(op, "b", b, (tasks, None, q), f"[T, B, q] with T={tasks}, q={q}")


def _check_neumann(op: str, scale: torch.Tensor | None, b: torch.Tensor, tasks: int, iters: int, damping: float,
                   rtol: float | None) -> None:
    if scale is not None:
        check_shape(op, "scale", scale, (tasks,), f"[T] = [{tasks}]")
        require(scale.device == b.device, op, f"scale is on {scale.device} but b is on {b.device}; move them to one "
                                              f"device")
        require(scale.is_floating_point(), op, f"scale must be a floating-point tensor, got {scale.dtype}")
    require(iters >= 0, op, f"iters must be >= 0, got {iters}")
    check_number(op, "damping", damping)
    if rtol is not None:
        check_number(op, "rtol", rtol, 0.0)


def _cg_outputs(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tasks, batch = b.shape[:2]
    return (torch.empty_like(b, memory_format=torch.contiguous_format),
            b.new_empty((tasks, batch), dtype=torch.int64), b.new_empty((tasks, batch)))


def _check_cg(op: str, damping: float, rtol: float, maxiter: int) -> None:
    check_number(op, "damping", damping)
    check_number(op, "rtol", rtol, 0.0)
    require(maxiter >= -1, op, f"maxiter must be >= 0, got {maxiter}")


def _check_singular(op: str, damping: float) -> None:
    require(damping > 0, op, f"damping must be > 0, got {damping}: the softmax cross-entropy Hessian is singular")


@torch.library.register_fake("metaif::neumann_dense")
def _neumann_dense_fake(a, b, scale, iters, damping, rtol):
    _check_dense("neumann_dense", a, b)
    _check_neumann("neumann_dense", scale, b, a.shape[0], iters, damping, rtol)
    return torch.empty_like(b, memory_format=torch.contiguous_format)


@torch.library.register_fake("metaif::neumann_ce_head")
def _neumann_ce_head_fake(feats, probs, weights, b, scale, iters, damping, rtol):
    check_ce_head("neumann_ce_head", feats, probs, weights, b, "b")
    _check_neumann("neumann_ce_head", scale, b, feats.shape[0], iters, damping, rtol)
    _check_singular("neumann_ce_head", damping)
    return torch.empty_like(b, memory_format=torch.contiguous_format)


@torch.library.register_fake("metaif::cg_dense")
def _cg_dense_fake(a, b, damping, rtol, maxiter):
    _check_dense("cg_dense", a, b)
    _check_cg("cg_dense", damping, rtol, maxiter)
    return _cg_outputs(b)


@torch.library.register_fake("metaif::cg_ce_head")
def _cg_ce_head_fake(feats, probs, weights, b, damping, rtol, maxiter):
    check_ce_head("cg_ce_head", feats, probs, weights, b, "b")
    _check_cg("cg_ce_head", damping, rtol, maxiter)
    _check_singular("cg_ce_head", damping)
    return _cg_outputs(b)


# ---- autograd: all four are linear maps of b (CG's by its fixed point, A^-1 b) ----------------

def _neumann_dense_setup(ctx, inputs, output):
    a, b, scale, iters, damping, rtol = inputs
    check_vector_only_grad("neumann_dense", "b", a=a)
    ctx.save_for_backward(a, scale)
    ctx.iters, ctx.damping = iters, damping


def _neumann_dense_backward(ctx, grad):
    a, scale = ctx.saved_tensors
    g = torch.ops.metaif.neumann_dense(a.mT, grad, scale, ctx.iters, ctx.damping, None)
    return None, g, None, None, None, None


def _neumann_ce_head_setup(ctx, inputs, output):
    feats, probs, weights, b, scale, iters, damping, rtol = inputs
    check_vector_only_grad("neumann_ce_head", "b", feats=feats, probs=probs, weights=weights)
    ctx.save_for_backward(feats, probs, weights, scale)
    ctx.iters, ctx.damping = iters, damping


def _neumann_ce_head_backward(ctx, grad):
    feats, probs, weights, scale = ctx.saved_tensors
    g = torch.ops.metaif.neumann_ce_head(feats, probs, weights, grad, scale, ctx.iters, ctx.damping, None)
    return None, None, None, g, None, None, None, None


def _cg_dense_setup(ctx, inputs, output):
    a, b, damping, rtol, maxiter = inputs
    check_vector_only_grad("cg_dense", "b", a=a)
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.save_for_backward(a)
    ctx.args = (damping, rtol, maxiter)


def _cg_dense_backward(ctx, grad_x, grad_iters, grad_resid):
    (a,) = ctx.saved_tensors
    return None, torch.ops.metaif.cg_dense(a, grad_x, *ctx.args)[0], None, None, None


def _cg_ce_head_setup(ctx, inputs, output):
    feats, probs, weights, b, damping, rtol, maxiter = inputs
    check_vector_only_grad("cg_ce_head", "b", feats=feats, probs=probs, weights=weights)
    ctx.mark_non_differentiable(output[1], output[2])
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
