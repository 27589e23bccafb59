"""Kronecker-factored eigenbasis (EK-FAC / K-FAC) primitives."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_floating, check_like, check_number, check_shape, check_vector_only_grad, require

__all__ = ["kfe_ihvp", "kfe_ihvp_grouped", "kfe_eigvals"]


def kfe_ihvp(grads: torch.Tensor, q_out: torch.Tensor, q_in: torch.Tensor,
             eigvals: torch.Tensor, damping: float = 0.0) -> torch.Tensor:
    """Inverse of a Kronecker-factored eigenbasis curvature applied to layer-shaped vectors.

    ``out[b] = q_out @ ((q_out.T @ grads[b] @ q_in) / (eigvals + damping)) @ q_in.T``

    Args:
        grads: ``[..., d_out, d_in]`` vectors in weight shape (any leading batch dims).
        q_out: ``[d_out, d_out]`` orthogonal eigenbasis of the output-gradient factor S.
        q_in: ``[d_in, d_in]`` orthogonal eigenbasis of the input factor A.
        eigvals: ``[d_out, d_in]`` eigenvalues in that basis (EK-FAC corrected, or
            ``outer(lambda_S, lambda_A)`` for K-FAC).
        damping: added to every eigenvalue; ``eigvals + damping`` must be positive.

    Returns:
        ``[..., d_out, d_in]``, same dtype as ``grads``. Differentiable in ``grads``.
    """
    return torch.ops.metaif.kfe_ihvp(grads, q_out, q_in, eigvals, float(damping))


def kfe_ihvp_grouped(grads: Sequence[torch.Tensor], q_out: Sequence[torch.Tensor],
                     q_in: Sequence[torch.Tensor], eigvals: Sequence[torch.Tensor],
                     damping: float = 0.0) -> list[torch.Tensor]:
    """:func:`kfe_ihvp` for several layers in one call (one list entry per layer)."""
    if len(grads) == 0 and len(q_out) == 0 and len(q_in) == 0 and len(eigvals) == 0:
        return []
    return list(torch.ops.metaif.kfe_ihvp_grouped(list(grads), list(q_out), list(q_in),
                                                  list(eigvals), float(damping)))


def kfe_eigvals(out_grads: torch.Tensor, acts: torch.Tensor, q_out: torch.Tensor,
                q_in: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """EK-FAC corrected eigenvalues ``sum_n w_n ((q_out.T @ DW_n @ q_in) ** 2)``.

    ``DW_n = sum_t out_grads[n, t] acts[n, t]^T`` is example n's weight gradient (t = 1 for a
    linear layer, spatial positions for a convolution); it is never materialised for all n.

    Args:
        out_grads: ``[n, t, d_out]`` gradients of the loss w.r.t. the layer's outputs.
        acts: ``[n, t, d_in]`` the layer's inputs (append a ones column for the bias).
        q_out: ``[d_out, d_out]``; q_in: ``[d_in, d_in]`` eigenbases.
        weights: ``[n]`` expectation weights; ``None`` means the mean (1/n each).

    Returns:
        ``[d_out, d_in]``. Not differentiable: inputs that require grad raise.
    """
    return torch.ops.metaif.kfe_eigvals(out_grads, acts, q_out, q_in, weights)


def _check_kfe(op: str, grads: torch.Tensor, q_out: torch.Tensor, q_in: torch.Tensor,
               eigvals: torch.Tensor, damping: float) -> None:
    require(grads.dim() >= 2, op, f"grads must have shape [..., d_out, d_in], got {tuple(grads.shape)}")
    check_floating(op, "grads", grads)
    for name, t in (("q_out", q_out), ("q_in", q_in), ("eigvals", eigvals)):
        check_like(op, "grads", grads, name, t)
    d_out, d_in = grads.shape[-2:]
    check_shape(op, "q_out", q_out, (d_out, d_out), f"[d_out, d_out] = [{d_out}, {d_out}]")
    check_shape(op, "q_in", q_in, (d_in, d_in), f"[d_in, d_in] = [{d_in}, {d_in}]")
    check_shape(op, "eigvals", eigvals, (d_out, d_in), f"[d_out, d_in] = [{d_out}, {d_in}]")
    check_number(op, "damping", damping, 0.0)


@torch.library.register_fake("metaif::kfe_ihvp")
def _kfe_ihvp_fake(grads, q_out, q_in, eigvals, damping):
    _check_kfe("kfe_ihvp", grads, q_out, q_in, eigvals, damping)
    return torch.empty_like(grads, memory_format=torch.contiguous_format)


@torch.library.register_fake("metaif::kfe_ihvp_grouped")
def _kfe_ihvp_grouped_fake(grads, q_out, q_in, eigvals, damping):
    require(len(grads) == len(q_out) == len(q_in) == len(eigvals), "kfe_ihvp_grouped",
            "grads, q_out, q_in and eigvals must have one entry per layer")
    for layer in zip(grads, q_out, q_in, eigvals):
        _check_kfe("kfe_ihvp_grouped", *layer, damping)
    return [torch.empty_like(g, memory_format=torch.contiguous_format) for g in grads]


@torch.library.register_fake("metaif::kfe_eigvals")
def _kfe_eigvals_fake(out_grads, acts, q_out, q_in, weights):
    op = "kfe_eigvals"
    check_floating(op, "out_grads", out_grads)
    check_shape(op, "out_grads", out_grads, (None, None, None), "[n, t, d_out]")
    n, t, d_out = out_grads.shape
    check_shape(op, "acts", acts, (n, t, None), f"[n, t, d_in] with n={n}, t={t}")
    d_in = acts.shape[2]
    for name, x in (("acts", acts), ("q_out", q_out), ("q_in", q_in)):
        check_like(op, "out_grads", out_grads, name, x)
    check_shape(op, "q_out", q_out, (d_out, d_out), "[d_out, d_out]")
    check_shape(op, "q_in", q_in, (d_in, d_in), "[d_in, d_in]")
    if weights is not None:
        check_like(op, "out_grads", out_grads, "weights", weights)
        check_shape(op, "weights", weights, (n,), "[n]")
    return out_grads.new_empty((d_out, d_in))


def _kfe_eigvals_refuse(ctx, inputs, output):
    names = ("out_grads", "acts", "q_out", "q_in", "weights")
    wanted = [name for name, t in zip(names, inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    raise RuntimeError(f"kfe_eigvals is not differentiable, but {', '.join(wanted)} requires grad; detach the "
                       f"inputs (the eigenvalues are curvature statistics, not a function to train through)")


torch.library.register_autograd("metaif::kfe_eigvals", lambda ctx, grad: None, setup_context=_kfe_eigvals_refuse)


# The K-FAC inverse is a symmetric linear map of grads, so its backward is itself.
def _kfe_setup(ctx, inputs, output):
    grads, q_out, q_in, eigvals, damping = inputs
    check_vector_only_grad("kfe_ihvp", "grads", q_out=q_out, q_in=q_in, eigvals=eigvals)
    ctx.save_for_backward(q_out, q_in, eigvals)
    ctx.damping = damping


def _kfe_backward(ctx, grad):
    q_out, q_in, eigvals = ctx.saved_tensors
    return kfe_ihvp(grad, q_out, q_in, eigvals, ctx.damping), None, None, None, None


torch.library.register_autograd("metaif::kfe_ihvp", _kfe_backward, setup_context=_kfe_setup)


def _kfe_grouped_setup(ctx, inputs, output):
    grads, q_out, q_in, eigvals, damping = inputs
    for i, layer in enumerate(zip(q_out, q_in, eigvals)):
        check_vector_only_grad("kfe_ihvp_grouped", "grads",
                               **{f"{name}[{i}]": t for name, t in zip(("q_out", "q_in", "eigvals"), layer)})
    ctx.layers = (list(q_out), list(q_in), list(eigvals))
    ctx.damping = damping


def _kfe_grouped_backward(ctx, grads):
    q_out, q_in, eigvals = ctx.layers
    none = [None] * len(q_out)
    return kfe_ihvp_grouped(list(grads), q_out, q_in, eigvals, ctx.damping), none, none, none, None


torch.library.register_autograd("metaif::kfe_ihvp_grouped", _kfe_grouped_backward,
                                setup_context=_kfe_grouped_setup)
