"""Batched curvature-vector products of softmax cross-entropy."""

from __future__ import annotations

import torch

from ._checks import check_floating, check_like, check_number, check_shape, check_vector_only_grad

__all__ = ["ce_head_hvp", "ggn_hvp"]


def ce_head_hvp(feats: torch.Tensor, probs: torch.Tensor, vecs: torch.Tensor,
                damping: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Exact Hessian-vector products of a weighted softmax cross-entropy w.r.t. a linear head.

    For task t with head ``Theta`` (``C x d``, bias folded into the features) the Hessian is
    ``H_t[V] = sum_j w_j (diag p_j - p_j p_j^T) V phi_j phi_j^T``; labels do not enter it.

    Args:
        feats: ``[T, n, d]`` features ``phi`` (append a ones column for the bias).
        probs: ``[T, n, C]`` softmax probabilities at the current head.
        vecs: ``[T, B, C, d]`` B head-shaped vectors per task.
        damping: adds ``damping * vecs``.
        weights: ``[T, n]`` per-example weights; ``None`` means the mean (1/n each).

    Returns:
        ``[T, B, C, d]``. Differentiable in ``vecs``.
    """
    return torch.ops.metaif.ce_head_hvp(feats, probs, vecs, float(damping), weights)


def ggn_hvp(jac: torch.Tensor, probs: torch.Tensor, vecs: torch.Tensor,
            damping: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Gauss-Newton-vector products ``sum_j w_j J_j^T (diag p_j - p_j p_j^T) J_j v + damping v``.

    Args:
        jac: ``[T, n, C, P]`` per-example Jacobians of the C logits w.r.t. P parameters.
        probs: ``[T, n, C]`` softmax probabilities.
        vecs: ``[T, B, P]``.
        damping: adds ``damping * vecs``.
        weights: ``[T, n]``; ``None`` means the mean (1/n each).

    Returns:
        ``[T, B, P]``. Differentiable in ``vecs``.
    """
    return torch.ops.metaif.ggn_hvp(jac, probs, vecs, float(damping), weights)


def check_ce_head(op: str, feats: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor | None,
                  vecs: torch.Tensor, vecs_name: str) -> None:
    """Fake-kernel checks of the ce-head operator's inputs (shared with the solvers)."""
    check_floating(op, "feats", feats)
    check_shape(op, "feats", feats, (None, None, None), "[T, n, d]")
    tasks, n, d = feats.shape
    check_shape(op, "probs", probs, (tasks, n, None), f"[T, n, C] with T={tasks}, n={n}")
    classes = probs.shape[2]
    check_shape(op, vecs_name, vecs, (tasks, None, classes, d), f"[T, B, C, d] with T={tasks}, C={classes}, d={d}")
    for name, t in (("probs", probs), (vecs_name, vecs)):
        check_like(op, "feats", feats, name, t)
    if weights is not None:
        check_like(op, "feats", feats, "weights", weights)
        check_shape(op, "weights", weights, (tasks, n), f"[T, n] = [{tasks}, {n}]")


@torch.library.register_fake("metaif::ce_head_hvp")
def _ce_head_hvp_fake(feats, probs, vecs, damping, weights):
    check_ce_head("ce_head_hvp", feats, probs, weights, vecs, "vecs")
    check_number("ce_head_hvp", "damping", damping)
    return torch.empty_like(vecs, memory_format=torch.contiguous_format)


@torch.library.register_fake("metaif::ggn_hvp")
def _ggn_hvp_fake(jac, probs, vecs, damping, weights):
    op = "ggn_hvp"
    check_floating(op, "jac", jac)
    check_shape(op, "jac", jac, (None, None, None, None), "[T, n, C, P]")
    tasks, n, classes, params = jac.shape
    check_shape(op, "probs", probs, (tasks, n, classes), "[T, n, C]")
    check_shape(op, "vecs", vecs, (tasks, None, params), "[T, B, P]")
    for name, t in (("probs", probs), ("vecs", vecs)):
        check_like(op, "jac", jac, name, t)
    if weights is not None:
        check_like(op, "jac", jac, "weights", weights)
        check_shape(op, "weights", weights, (tasks, n), "[T, n]")
    check_number(op, "damping", damping)
    return torch.empty_like(vecs, memory_format=torch.contiguous_format)


# Both operators are symmetric and linear in vecs: the backward applies the same operator.
def _setup_factory(op: str, operator_names: tuple[str, str]):
    def setup(ctx, inputs, output):
        first, probs, vecs, damping, weights = inputs
        check_vector_only_grad(op, "vecs", **{operator_names[0]: first, operator_names[1]: probs}, weights=weights)
        ctx.save_for_backward(first, probs, weights)
        ctx.damping = damping
    return setup


def _ce_head_backward(ctx, grad):
    feats, probs, weights = ctx.saved_tensors
    return None, None, ce_head_hvp(feats, probs, grad, ctx.damping, weights), None, None


def _ggn_backward(ctx, grad):
    jac, probs, weights = ctx.saved_tensors
    return None, None, ggn_hvp(jac, probs, grad, ctx.damping, weights), None, None


torch.library.register_autograd("metaif::ce_head_hvp", _ce_head_backward,
                                setup_context=_setup_factory("ce_head_hvp", ("feats", "probs")))
torch.library.register_autograd("metaif::ggn_hvp", _ggn_backward,
                                setup_context=_setup_factory("ggn_hvp", ("jac", "probs")))
