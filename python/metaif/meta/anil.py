"""Form (b) of math.md §14: a shared body lambda with a per-task linear head theta_i (ANIL /
MetaOptNet style).

The body maps an input to features phi; the head Theta ``[K, h+1]`` (a bias folded into a
constant feature, flattened class-major) is fitted per task by a strictly convex inner problem
``sum_j w_j l(Theta phi_j, y_j) + delta/2 ||Theta||^2`` with the loss ``l`` of
:mod:`metaif.curvature.losses` (softmax cross-entropy, squared error on one-hot or real-valued
targets, binary logistic), solved in feature space for all tasks of a batch at once by damped
Newton (one exact step for the squared loss).
"""

from __future__ import annotations

import torch

from ..curvature import LOSSES, LinearHeadCurvature, features, get_loss, head_solver, linear_logits
from ..models.nets import FlatModel
from ..utils.config import check, check_choice, config, finite, setting
from .batch import TaskBatch
from .heads import damped_newton

__all__ = ["AnilConfig", "AnilProblem", "with_bias"]


@config
class AnilConfig:
    """The body-plus-head form."""

    ways: int = setting(5, "classes per task: the head's outputs (its target dimension for real-valued targets "
                           "with the squared loss)")
    loss: str = setting("softmax", "head loss: softmax (cross-entropy), squared (ridge; one-hot or real-valued "
                                   "targets), binary (one logit, 2 classes)", choices=tuple(LOSSES))
    delta: float = setting(0.1, "inner L2 weight on the head (> 0: strictly convex inner problem)")
    gamma: float = setting(1e-4, "outer L2 weight on the body")
    inner_tol: float = setting(1e-5, "head solves stop at ||grad_theta F_i|| <= inner_tol")
    inner_max_iter: int = setting(50, "Newton steps per head solve at most")

    def __post_init__(self) -> None:
        check(isinstance(self.ways, int) and self.ways >= 1, self, "ways", "an integer >= 1", self.ways)
        check_choice(self, "loss", self.loss, LOSSES)
        check(finite(self.delta) and self.delta > 0, self, "delta", "> 0 (the inner problem must be strictly convex)",
              self.delta)
        check(finite(self.gamma) and self.gamma >= 0, self, "gamma", "a finite number >= 0", self.gamma)
        check(finite(self.inner_tol) and self.inner_tol > 0, self, "inner_tol", "> 0", self.inner_tol)
        check(isinstance(self.inner_max_iter, int) and self.inner_max_iter >= 1, self, "inner_max_iter", ">= 1",
              self.inner_max_iter)


def with_bias(phi: torch.Tensor) -> torch.Tensor:
    """``[..., h]`` → ``[..., h+1]`` with a trailing constant 1."""
    return torch.cat([phi, torch.ones_like(phi[..., :1])], dim=-1)


class AnilProblem:
    """Body lambda (flat, ``[p]``) and linear heads theta (flat per task, ``[q]``, q = K (h+1)).

    Declares :class:`~.problem.FeatureHeadProblem` and :class:`~.problem.HeadCurvature`; the
    per-task seam comes from :func:`~.heads.bilevel`.
    """

    form = "anil"

    def __init__(self, body: FlatModel, config: AnilConfig) -> None:
        self.body, self.config = body, config
        self.gamma, self.delta = config.gamma, config.delta
        self.inner_tol, self.inner_max_iter = config.inner_tol, config.inner_max_iter
        self.loss = get_loss(config.loss)
        self.outputs, self.feat_dim = self.loss.outputs(config.ways), body.out_features + 1

    @property
    def theta_dim(self) -> int:
        return self.outputs * self.feat_dim

    def init_lambda(self, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.body.init(seed, dtype)

    # ---- the head in feature space, batched over tasks (theta [B, q], phi [B, n, h]) ---------

    def logits(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        return linear_logits(theta, with_bias(phi))

    def head_outer_objective(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``L_i`` per task ``[B]``."""
        return (w * self.loss.value(self.logits(theta, phi), y)).sum(-1)

    def head_inner_objective(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``F_i`` per task ``[B]``."""
        return self.head_outer_objective(theta, phi, y, w) + 0.5 * self.delta * theta.pow(2).sum(-1)

    def head_inner_grad(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``grad_theta F_i`` in closed form, ``[B, q]``; differentiable in phi (for C_i^T u)."""
        phi_b = with_bias(phi)
        resid = self.loss.residual(linear_logits(theta, phi_b), y)
        return torch.einsum("bn,bnc,bnk->bck", w, resid, phi_b).flatten(1) + self.delta * theta

    def head_curvature(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                       damping: float = 0.0) -> LinearHeadCurvature:
        """``grad^2_theta F_i + damping I`` (the labels do not enter it)."""
        phi_b = with_bias(phi.detach())
        logits = linear_logits(theta, phi_b)
        probs = torch.softmax(logits, -1) if self.config.loss == "softmax" else None
        return LinearHeadCurvature(self.loss.hessian(logits), phi_b, w, self.delta + damping, probs,
                                   self.loss.hessian_root(logits))

    def solve_heads(self, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    theta0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads ``theta_i [B, q]`` (from ``theta0``, else zeros) and their ``||grad_theta F_i|| [B]``."""
        phi = phi.detach()
        theta = phi.new_zeros(phi.shape[0], self.theta_dim) if theta0 is None else theta0.detach().to(phi)
        return damped_newton(lambda th: self.head_inner_objective(th, phi, y, w),
                             lambda th: self.head_inner_grad(th, phi, y, w),
                             lambda th, g: head_solver(self.head_curvature(th, phi, y, w))(g),
                             theta, self.inner_tol, self.inner_max_iter, quadratic=self.loss.quadratic)

    # ---- what evaluation needs (training uses metaif.meta.binding.meta_gradient) -------------

    def predict(self, lam: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """Adapt each head on the train split, return validation logits ``[B, v, K]``."""
        phi = features(self.body, lam, batch.inputs)
        with torch.no_grad():
            theta, _ = self.solve_heads(phi[batch.pos_tr], batch.y_tr, batch.w_tr)
            return self.logits(theta, phi[batch.pos_val])
