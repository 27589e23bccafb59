"""What the engine uses of a :class:`~.problem.FeatureHeadProblem`, with defaults for what a
problem leaves out: the per-task seam methods (derived from the feature-space ones), the inner
gradient by autograd, heads by damped Newton on autograd Hessians, and a dense Cholesky head
solve. Problems that also declare :class:`~.problem.HeadCurvature` (the built-in ANIL) supply
the fast versions (closed-form gradient, Woodbury / EK-FAC / CG head solves)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, hessian, vmap

from ..curvature import head_solver, pooled_kfe_bases
from .problem import BilevelProblem, FeatureHeadProblem, HeadCurvature, HeadSolveSettings

__all__ = ["FeatureHead", "bilevel", "damped_newton"]

NEWTON_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
DEFAULT_NEWTON_STEPS = 50


def damped_newton(objective: Callable, gradient: Callable, newton_step: Callable, theta: torch.Tensor,
                  tol: float, max_iter: int, quadratic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise B strictly convex objectives at once (``objective(theta [B, q]) -> [B]``) by Newton
    steps ``newton_step(theta, grad) -> H^{-1} grad`` with a per-task halving line search; a
    ``quadratic`` objective takes one full step. Returns theta and the final gradient norms ``[B]``."""
    for _ in range(1 if quadratic else max_iter):
        g = gradient(theta)
        if not quadratic and bool((g.norm(dim=-1) <= tol).all()):
            break
        step = newton_step(theta, g)
        if quadratic:
            theta = theta - step
            break
        f0 = objective(theta)
        slack = 8 * torch.finfo(f0.dtype).eps * (f0.abs() + 1)  # rounding, not an increase
        scale = torch.ones_like(f0)
        for _ in range(30):
            trial = theta - scale[:, None] * step
            bad = objective(trial) > f0 + slack
            if not bool(bad.any()):
                break
            scale = torch.where(bad, 0.5 * scale, scale)
        theta = trial
    return theta, gradient(theta).norm(dim=-1)


class FeatureHead:
    """A :class:`FeatureHeadProblem` seen through one interface (feature-space forms batched over
    B tasks; seam forms on one task)."""

    def __init__(self, problem) -> None:
        if not isinstance(problem, FeatureHeadProblem):
            raise TypeError(f"{type(problem).__name__} does not declare a feature-space head (FeatureHeadProblem: "
                            f"gamma, body, theta_dim, head_inner_objective, head_outer_objective)")
        self.problem, self.body, self.gamma = problem, problem.body, problem.gamma
        self.theta_dim = problem.theta_dim
        self.fast = isinstance(problem, HeadCurvature)
        settings = isinstance(problem, HeadSolveSettings)
        self.inner_tol = problem.inner_tol if settings else None
        self.inner_max_iter = problem.inner_max_iter if settings else DEFAULT_NEWTON_STEPS

    # ---- feature space, B tasks ----------------------------------------------------------------

    def features(self, lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x [B, n, ...]`` → ``[B, n, h]`` (one body pass for the whole batch)."""
        return self.body(lam, x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def inner_objective(self, theta, phi, y, w) -> torch.Tensor:
        return self.problem.head_inner_objective(theta, phi, y, w)

    def outer_objective(self, theta, phi, y, w) -> torch.Tensor:
        return self.problem.head_outer_objective(theta, phi, y, w)

    def inner_grad(self, theta, phi, y, w) -> torch.Tensor:
        """``grad_theta F_i`` ``[B, q]``, differentiable in phi."""
        if self.fast:
            return self.problem.head_inner_grad(theta, phi, y, w)
        return grad(lambda th: self.inner_objective(th, phi, y, w).sum())(theta)

    def _dense_hessian(self, theta, phi, y, w) -> torch.Tensor:
        def one(th, ph, yy, ww):
            return self.inner_objective(th[None], ph[None], yy[None], ww[None])[0]

        h = vmap(hessian(one))(theta, phi, y, w)
        return 0.5 * (h + h.mT)

    def solver(self, theta, phi, y, w, method: str = "auto", damping: float = 0.0,
               bases: tuple[torch.Tensor, torch.Tensor] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``rhs [B, q] -> (grad^2_theta F_i + damping I)^{-1} rhs`` by the head solver ``method``
        (:data:`~metaif.curvature.HEAD_SOLVERS`; a head without :class:`HeadCurvature` supports
        "auto" and "cholesky", on its autograd Hessian)."""
        phi = phi.detach()
        if self.fast:
            return head_solver(self.problem.head_curvature(theta, phi, y, w, damping), method, bases)
        if method not in ("auto", "cholesky"):
            raise ValueError(f"head solver {method!r} needs a linear head with a GLM loss (the HeadCurvature "
                             f"methods); {type(self.problem).__name__} supports 'auto' and 'cholesky'")
        h = self._dense_hessian(theta, phi, y, w)
        chol = torch.linalg.cholesky(h + damping * torch.eye(h.shape[-1], dtype=h.dtype, device=h.device))
        return lambda rhs: torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)

    def pooled_bases(self, theta, phi, y, w) -> tuple[torch.Tensor, torch.Tensor]:
        """EK-FAC eigenbases pooled over the B tasks (needs :class:`HeadCurvature`)."""
        if not self.fast:
            raise ValueError("pooled EK-FAC bases need a linear head with a GLM loss (HeadCurvature)")
        return pooled_kfe_bases(self.problem.head_curvature(theta, phi.detach(), y, w, 0.0))

    def solve(self, phi, y, w, theta0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads ``[B, q]`` and their ``||grad_theta F_i|| [B]`` (phi detached)."""
        phi = phi.detach()
        if self.fast:
            return self.problem.solve_heads(phi, y, w, theta0)
        theta = phi.new_zeros(phi.shape[0], self.theta_dim) if theta0 is None else theta0.detach().to(phi)
        tol = self.inner_tol if self.inner_tol is not None else NEWTON_TOL[phi.dtype]
        return damped_newton(lambda th: self.inner_objective(th, phi, y, w),
                             lambda th: self.inner_grad(th, phi, y, w),
                             lambda th, g: self.solver(th, phi, y, w, "cholesky")(g), theta, tol, self.inner_max_iter)

    # ---- the seam (one task, flat vectors) -----------------------------------------------------

    def inner_objective_seam(self, theta, lam, x, y, w) -> torch.Tensor:
        return self.inner_objective(theta[None], self.body(lam, x)[None], y[None], w[None])[0]

    def outer_objective_seam(self, theta, lam, x, y, w) -> torch.Tensor:
        return self.outer_objective(theta[None], self.body(lam, x)[None], y[None], w[None])[0]

    def solve_inner(self, lam, x, y, w, theta0=None) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            theta, norm = self.solve(self.body(lam, x)[None], y[None], w[None],
                                     None if theta0 is None else theta0[None])
        return theta[0], float(norm[0])


class _SeamView:
    """A :class:`FeatureHeadProblem` as a :class:`BilevelProblem` (the seam methods of :class:`FeatureHead`)."""

    def __init__(self, head: FeatureHead) -> None:
        self.head, self.gamma, self.anchor = head, head.gamma, getattr(head.problem, "anchor", None)
        self.inner_objective = head.inner_objective_seam
        self.outer_objective = head.outer_objective_seam
        self.solve_inner = head.solve_inner


def bilevel(problem) -> BilevelProblem:
    """``problem`` as a :class:`BilevelProblem`: itself when it is one, else the seam derived from its
    feature-space head."""
    if isinstance(problem, BilevelProblem):
        return problem
    if isinstance(problem, FeatureHeadProblem):
        return _SeamView(FeatureHead(problem))
    raise TypeError(f"{type(problem).__name__} is neither a BilevelProblem (inner_objective, outer_objective, "
                    f"solve_inner, gamma) nor a FeatureHeadProblem (body, theta_dim, head_inner_objective, "
                    f"head_outer_objective, gamma)")
