"""Exact damped low-rank solves by the Woodbury identity (the few-shot GGN inverse)."""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["WoodburyInverse", "as_damping", "woodbury_solve"]


def as_damping(value, name: str = "damping", positive: bool = True) -> float:
    """A Python float from a real number, a NumPy scalar or a 0-dim real tensor, finite and
    ``> 0`` (``>= 0`` unless ``positive``); raises ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a real number, got a {value.dtype} tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    bound_ok = value > 0 if positive else value >= 0
    if not (math.isfinite(value) and bound_ok):
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value}")
    return value


class WoodburyInverse:
    """``(damping I + U U^T)^{-1}`` per task for fixed factors ``u [T, P, r]``, factored once (an
    ``r x r`` Cholesky per task): every application is two products and a triangular solve, with
    no host synchronisation (the factorisation checks its result once, here)."""

    def __init__(self, u: torch.Tensor, damping: float) -> None:
        self.mu = as_damping(damping)
        if u.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"woodbury_solve: u must be float32 or float64, got {u.dtype}")
        if u.dim() != 3:
            raise ValueError(f"woodbury_solve: u must have shape [T, P, r], got {tuple(u.shape)}")
        self.u = u
        eye = torch.eye(u.shape[2], dtype=u.dtype, device=u.device)
        self.chol = torch.linalg.cholesky(self.mu * eye + u.mT @ u)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``v [T, B, P]`` -> ``[T, B, P]``."""
        u = self.u
        tasks, params = u.shape[0], u.shape[1]
        if v.dim() != 3 or v.shape[0] != tasks or v.shape[2] != params:
            raise ValueError(f"woodbury_solve: v must have shape [T, B, P] = [{tasks}, B, {params}], got "
                             f"{tuple(v.shape)}")
        if v.dtype != u.dtype or v.device != u.device:
            raise ValueError(f"woodbury_solve: u ({u.dtype}, {u.device}) and v ({v.dtype}, {v.device}) must share "
                             f"dtype and device")
        coeffs = torch.cholesky_solve(u.mT @ v.mT, self.chol)  # [T, r, B]
        return (v - (u @ coeffs).mT) / self.mu


def woodbury_solve(u: torch.Tensor, v: torch.Tensor, damping: float) -> torch.Tensor:
    """``(damping I + U U^T)^{-1} v`` per task, exact, in ``O(P r^2 + r^3)`` per task.

    ``(mu I + U U^T)^{-1} = (I - U (mu I_r + U^T U)^{-1} U^T) / mu``; with U the stacked
    per-example logit Jacobians scaled by the square root of the output Hessian this is the
    exact inverse of a few-shot GGN (r = n C). Pure ``torch.linalg`` (not a compiled op); for
    many solves with the same ``u`` factor once with :class:`WoodburyInverse`.

    Args:
        u: ``[T, P, r]`` low-rank factors, float32 or float64.
        v: ``[T, B, P]`` right-hand sides, same dtype and device.
        damping: ``mu > 0`` (a number, NumPy scalar or 0-dim tensor).

    Returns:
        ``[T, B, P]``. Differentiable in all inputs.
    """
    for name, t in (("u", u), ("v", v)):
        if t.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"woodbury_solve: {name} must be float32 or float64, got {t.dtype}")
    return WoodburyInverse(u, damping)(v)
