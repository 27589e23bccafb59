"""The implicit total gradient (math.md §3) written once against the bilevel seam.

Any problem that exposes ``solve_inner(lam, x, y, w)``, ``inner_objective`` and
``outer_objective(theta, lam, x, y, w)`` on flat vectors gets its total gradient here, by
autograd and a dense inner Hessian (small q). The built-in forms have batched fast paths
(``outer_gradient``); this is their reference and the route for a user's own problem.
"""

from __future__ import annotations

import torch
from torch.func import grad, hessian

from .heads import bilevel
from .problem import UnrolledProblem


def total_gradient(problem, lam: torch.Tensor, x_tr: torch.Tensor, y_tr: torch.Tensor, w_tr: torch.Tensor,
                   x_val: torch.Tensor, y_val: torch.Tensor, w_val: torch.Tensor) -> torch.Tensor:
    """``g_i = grad_lambda L_i - C_i^T H_i^{-1} grad_theta L_i`` at ``theta_i(lambda)`` for one task, ``[p]``
    (for an explicit inner map, the gradient straight through it)."""
    if isinstance(problem, UnrolledProblem):
        return grad(lambda la: problem.outer_objective(problem.adapt(la, x_tr, y_tr, w_tr), la, x_val, y_val,
                                                       w_val))(lam)
    problem = bilevel(problem)
    theta, _ = problem.solve_inner(lam, x_tr, y_tr, w_tr)

    def inner(th, la):
        return problem.inner_objective(th, la, x_tr, y_tr, w_tr)

    def outer(th, la):
        return problem.outer_objective(th, la, x_val, y_val, w_val)

    a, b = grad(outer, argnums=(0, 1))(theta, lam)
    u = torch.linalg.solve(hessian(inner, argnums=0)(theta, lam), a)
    c_t_u = grad(lambda la: grad(inner, argnums=0)(theta, la) @ u)(lam)
    return b - c_t_u
