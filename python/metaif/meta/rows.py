"""The derivatives of an argmin inner map theta_i(lambda, w) (math.md §2–§4, §7–§10), in a task's
own coordinates, batched over rows.

A *row* is one task with its own train/validation weights. Each row's objectives are written as
functions of its head ``theta [B, q]`` and a *context* ``xi`` (a tuple of ``[B, ...]`` tensors) that
depends on lambda: the features of the task's images for the body-plus-head form, lambda itself
(broadcast per row) for a generic problem. This module never sees lambda; the binding
(:mod:`metaif.meta.binding`) turns context tangents and cotangents into lambda-space vectors.

With u = H^{-1} grad_theta L frozen and K = L - u^T grad_theta F (math.md §4):
    J v          = -H^{-1} (C v),        C v = d/dxi grad_theta F [xi_dot]
    D_lambda g v = pull-back of (grad_xi K, d/dx grad_xi K [x_dot]) minus C^T H^{-1} r_theta
Directional derivatives ``r^T D_lambda (.)`` of every task, validation and training instance
need one inner solve per row (§10's cheap scoring) and no per-item work: the per-instance
quantities are derivatives with respect to the instance weights, which the objectives are linear in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, jvp, vjp

Context = tuple[torch.Tensor, ...]
InnerGrad = Callable[[torch.Tensor, Context, torch.Tensor], torch.Tensor]  # (theta, xi, w_tr) -> [B, q]
Outer = Callable[[torch.Tensor, Context, torch.Tensor], torch.Tensor]      # (theta, xi, w_val) -> [B]
Solve = Callable[[torch.Tensor], torch.Tensor]                            # rhs [B, q] -> H^{-1} rhs


@dataclass
class Rows:
    """B rows at lambda*: heads ``theta [B, q]``, contexts ``xi`` (``source``: the tuple, or a function
    that makes it on each use, so that a task set's per-slot features need not all be held at once),
    weights ``w_tr [B, n]``, ``w_val [B, v]``, the inner solve ``H_i^{-1}``, the row objectives, and the
    adjoints ``u = H^{-1} grad_theta L [B, q]`` (computed when not given)."""

    theta: torch.Tensor
    source: Context | Callable[[], Context]
    w_tr: torch.Tensor
    w_val: torch.Tensor
    solve: Solve
    inner_grad: InnerGrad
    outer: Outer
    u: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.u is None:
            self.u = self.solve(self.outer_theta_grad())

    @property
    def xi(self) -> Context:
        return self.source() if callable(self.source) else self.source

    def k(self, theta: torch.Tensor, xi: Context, third_order: bool = True) -> torch.Tensor:
        """``K_i = L_i - u_i^T grad_theta F_i`` per row ``[B]`` (``L_i`` alone without the third order)."""
        value = self.outer(theta, xi, self.w_val)
        if third_order:
            value = value - (self.inner_grad(theta, xi, self.w_tr) * self.u).sum(-1)
        return value

    def data_grad(self, theta: torch.Tensor, xi: Context, w: torch.Tensor) -> torch.Tensor:
        """``sum_j w_j grad_theta l(z_j)`` over the train split (grad_theta F without the regulariser),
        ``[B, q]``: F is linear in the weights, so the regulariser is F's value at zero weights."""
        return self.inner_grad(theta, xi, w) - self.inner_grad(theta, xi, torch.zeros_like(w))

    def inner_tangent(self, w_dot: torch.Tensor) -> torch.Tensor:
        """``d theta / d w`` along training-weight changes ``w_dot [B, n]``: the inner-IF
        ``-H^{-1} sum_j w_dot_j grad_theta l(z_j)`` (math.md §8), ``[B, q]``."""
        return -self.solve(self.data_grad(self.theta, self.xi, w_dot))

    def cross(self, xi_dot: Context) -> torch.Tensor:
        """``C_i xi_dot``: the change of grad_theta F along the context, ``[B, q]``."""
        return jvp(lambda xi: self.inner_grad(self.theta, xi, self.w_tr), (self.xi,), (xi_dot,))[1]

    def cross_t(self, w: torch.Tensor) -> Context:
        """``C_i^T w`` as a context cotangent (``w [B, q]``)."""
        _, pull = vjp(lambda xi: self.inner_grad(self.theta, xi, self.w_tr), self.xi)
        return pull(w)[0]

    def jacobian(self, xi_dot: Context) -> torch.Tensor:
        """``t = J_i v = -H_i^{-1} C_i xi_dot``, ``[B, q]``."""
        return -self.solve(self.cross(xi_dot))

    def gradient_cotangent(self, c: torch.Tensor) -> Context:
        """Context cotangent of ``sum_i c_i g_i`` (``g_i = grad_lambda K_i`` at fixed theta, u)."""
        return grad(lambda xi: (c * self.k(self.theta, xi)).sum())(self.xi)

    def direct_cotangent(self, c: torch.Tensor) -> Context:
        """Context cotangent of ``sum_i c_i grad_lambda L_i`` with theta held fixed (direct IF)."""
        return grad(lambda xi: (c * self.outer(self.theta, xi, self.w_val)).sum())(self.xi)

    def direct_directional(self, xi_dot: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """``r^T grad_lambda`` with theta held fixed (the direct IF's) of each row's L ``[B]`` and of
        each validation loss ``[B, v]``."""
        def along(w):
            return jvp(lambda xi: self.outer(self.theta, xi, w), (self.xi,), (xi_dot,))[1]

        return along(self.w_val), grad(lambda w: along(w).sum())(self.w_val)

    def outer_theta_grad(self) -> torch.Tensor:
        """``a_i = grad_theta L_i``, ``[B, q]``."""
        return grad(lambda th: self.outer(th, self.xi, self.w_val).sum())(self.theta)

    def outer_theta_hvp(self, t: torch.Tensor) -> torch.Tensor:
        """``grad^2_theta L_i t``, ``[B, q]`` (the first-order baseline's curvature)."""
        return jvp(lambda th: grad(lambda t_: self.outer(t_, self.xi, self.w_val).sum())(th), (self.theta,), (t,))[1]

    def hvp_cotangents(self, xi_dot: Context, c: torch.Tensor, variant: str) -> tuple[Context, Context]:
        """``(G, M)`` with ``sum_i c_i D_lambda g_i v = pull(M) + d/dlambda <G, xi_dot(lambda)>``.

        ``variant``: "exact" (K), "gn" (L, no third-order term), "direct" (L with theta fixed).
        """
        direct = variant == "direct"
        t = torch.zeros_like(self.theta) if direct else self.jacobian(xi_dot)

        def k_grad(theta, xi):
            return grad(lambda th, x: (c * self.k(th, x, variant == "exact")).sum(), argnums=(0, 1))(theta, xi)

        (_, g_xi), (r_theta, m_xi) = jvp(k_grad, (self.theta, self.xi), (t, xi_dot))
        if not direct:
            n_xi = self.cross_t(self.solve(r_theta))
            m_xi = tuple(m - n for m, n in zip(m_xi, n_xi))
        return g_xi, m_xi

    def hvp_g(self, c: torch.Tensor, variant: str) -> Context:
        """The ``G`` of :meth:`hvp_cotangents` alone: ``d/dxi sum_i c_i K_i``, which no direction enters."""
        return grad(lambda xi: (c * self.k(self.theta, xi, variant == "exact")).sum())(self.xi)

    def directional(self, xi_dot: Context, third_order: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``r^T D_lambda`` of each row's K ``[B]``, each validation loss ``[B, v]`` and each
        training instance's ``a^T H^{-1} grad_theta l(z)`` ``[B, n]``, along ``x_dot = (J r, xi_dot)``."""
        t = self.jacobian(xi_dot)
        primal, tangent = (self.theta, self.xi), (t, xi_dot)
        task = jvp(lambda th, xi: self.k(th, xi), primal, tangent)[1]
        val = grad(lambda w: jvp(lambda th, xi: self.outer(th, xi, w), primal, tangent)[1].sum())(self.w_val)

        alpha = jvp(lambda th, xi: grad(lambda t_: self.outer(t_, xi, self.w_val).sum())(th), primal, tangent)[1]
        if third_order:
            beta = jvp(lambda th, xi: grad(lambda t_: (self.inner_grad(t_, xi, self.w_tr) * self.u).sum())(th),
                       primal, tangent)[1]
            alpha = alpha - beta
        rho = self.solve(alpha)

        def along(w):
            first = (rho * self.inner_grad(self.theta, self.xi, w)).sum()
            second = jvp(lambda th, xi: (self.u * self.inner_grad(th, xi, w)).sum(), primal, tangent)[1]
            return first + second

        return task, val, grad(along)(self.w_tr)

    def train_cotangent(self, onehot: torch.Tensor, third_order: bool = True) -> Context:
        """Context cotangent of ``D_lambda [a^T H^{-1} grad_theta l(z)]`` (math.md §10) per row, for the
        training instance selected by ``onehot [B, n]``."""
        s = self.solve(self.data_grad(self.theta, self.xi, onehot))

        def phi(theta, xi):
            a = grad(lambda th: self.outer(th, xi, self.w_val).sum())(theta)
            value = (s * a).sum(-1) + (self.u * self.data_grad(theta, xi, onehot)).sum(-1)
            if third_order:
                hs = jvp(lambda th: self.inner_grad(th, xi, self.w_tr), (theta,), (s,))[1]
                value = value - (self.u * hs).sum(-1)
            return value.sum()

        d_theta, d_xi = grad(phi, argnums=(0, 1))(self.theta, self.xi)
        correction = self.cross_t(self.solve(d_theta))
        return tuple(a - b for a, b in zip(d_xi, correction))

