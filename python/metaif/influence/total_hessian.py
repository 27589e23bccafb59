"""Total-Hessian-vector products (math.md §4) against the bilevel seam, in all four variants.

For task i with theta_i = theta_i(lambda) and the frozen adjoint u_i = H_i^{-1} grad_theta L_i:
    t = J_i v = -H_i^{-1} (C_i v)
    r = grad^2_x K_i (t, v),   K_i = L_i - u_i^T grad_theta F_i   (x = (theta, lambda))
    D_lambda g_i v = r_lambda - C_i^T H_i^{-1} r_theta
and H v = gamma v + sum_i c_i D_lambda g_i v. ``gn`` drops the third-order part of K_i (K_i = L_i),
``gamma`` adds Gamma = sum_i c_i ||grad_theta L_i||_1 to ``gn`` (Theorem 5.1), ``direct`` keeps
theta fixed (gamma v + sum_i c_i grad^2_lambda L_i v). Inner solves here are dense (small q);
the built-in forms' fast paths come next.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad, hessian, jvp

from ..meta.implicit import total_gradient

VARIANTS = ("exact", "gn", "gamma", "direct")


@dataclass
class TaskState:
    """What a task contributes at lambda*: its head, adjoint and dense inner Hessian factor."""

    theta: torch.Tensor   # [q]
    u: torch.Tensor       # [q], H^{-1} grad_theta L
    chol: torch.Tensor    # [q, q], Cholesky factor of H
    a_l1: float           # ||grad_theta L||_1, for Gamma
    data: tuple           # (x_tr, y_tr, w_tr, x_val, y_val, w_val)


def task_states(problem, lam: torch.Tensor, tasks: list[tuple]) -> list[TaskState]:
    """Solve every inner problem at ``lam`` and freeze its adjoint (one dense factorisation each)."""
    states = []
    for data in tasks:
        x_tr, y_tr, w_tr, x_val, y_val, w_val = data
        theta, _ = problem.solve_inner(lam, x_tr, y_tr, w_tr)
        h = hessian(lambda th: problem.inner_objective(th, lam, x_tr, y_tr, w_tr))(theta)
        chol = torch.linalg.cholesky(0.5 * (h + h.mT))
        a = grad(lambda th: problem.outer_objective(th, lam, x_val, y_val, w_val))(theta)
        u = torch.cholesky_solve(a[:, None], chol)[:, 0]
        states.append(TaskState(theta, u, chol, float(a.abs().sum()), data))
    return states


def total_hvp(problem, lam: torch.Tensor, states: list[TaskState], v: torch.Tensor, task_weights: torch.Tensor,
              variant: str = "exact") -> torch.Tensor:
    """``H v`` for one direction ``v [p]`` with per-task weights ``c [m]``; returns ``[p]``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    out = problem.gamma * v
    for c, st in zip(task_weights, states):
        x_tr, y_tr, w_tr, x_val, y_val, w_val = st.data

        def inner_grad(th, la):
            return grad(problem.inner_objective, argnums=0)(th, la, x_tr, y_tr, w_tr)

        def outer(th, la):
            return problem.outer_objective(th, la, x_val, y_val, w_val)

        if variant == "direct":
            out = out + c * jvp(lambda la: grad(outer, argnums=1)(st.theta, la), (lam,), (v,))[1]
            continue
        cv = jvp(lambda la: inner_grad(st.theta, la), (lam,), (v,))[1]
        t = -torch.cholesky_solve(cv[:, None], st.chol)[:, 0]

        def k(th, la):
            value = outer(th, la)
            return value - inner_grad(th, la) @ st.u if variant == "exact" else value

        r_theta, r_lam = jvp(lambda th, la: grad(k, argnums=(0, 1))(th, la), (st.theta, lam), (t, v))[1]
        w = torch.cholesky_solve(r_theta[:, None], st.chol)[:, 0]
        out = out + c * (r_lam - grad(lambda la: inner_grad(st.theta, la) @ w)(lam))
    if variant == "gamma":
        out = out + sum(float(c) * st.a_l1 for c, st in zip(task_weights, states)) * v
    return out


def total_gradient_sum(problem, lam: torch.Tensor, tasks: list[tuple], task_weights: torch.Tensor) -> torch.Tensor:
    """``D_lambda L(lambda) = sum_i c_i g_i + gamma lambda`` with every inner problem re-solved."""
    total = problem.gamma * lam
    for c, data in zip(task_weights, tasks):
        total = total + c * total_gradient(problem, lam, *data)
    return total


def finite_difference_hvp(problem, lam: torch.Tensor, tasks: list[tuple], v: torch.Tensor,
                          task_weights: torch.Tensor, h: float | None = None) -> torch.Tensor:
    """The test oracle: central differences of re-solved total gradients (float64 only)."""
    if lam.dtype != torch.float64:
        raise ValueError("finite_difference_hvp needs float64 (its error is O(h^2) + O(tol / h))")
    step = h if h is not None else 1e-5 * max(float(lam.norm()), 1.0)
    plus = total_gradient_sum(problem, lam + step * v, tasks, task_weights)
    minus = total_gradient_sum(problem, lam - step * v, tasks, task_weights)
    return (plus - minus) / (2 * step)
