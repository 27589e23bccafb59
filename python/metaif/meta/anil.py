"""Form (b) of math.md §14: a shared body lambda with a per-task linear head theta_i.

The body maps an input to features phi; the head Theta [C, h+1] (bias folded into a constant
feature) is fitted per task by a strictly convex inner problem, solved in feature space for all
tasks of a batch at once: softmax cross-entropy by damped Newton (dense q x q Hessians,
q = C (h+1)), squared loss on one-hot targets (ridge, MetaOptNet-R2D2-like) in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.nets import FlatModel
from ..curvature.head import ekfac_head_solver, ekfac_pooled_bases, head_factor
from ..ops.woodbury import woodbury_solve
from .batch import TaskBatch

HEADS = ("logistic", "ridge")
HEAD_SOLVERS = ("auto", "woodbury", "cholesky", "ekfac", "ekfac-pooled")


@dataclass(frozen=True)
class AnilConfig:
    """``ways`` classes per task; ``delta`` inner L2 on the head; ``gamma`` outer L2 on the body;
    the inner solve stops at ``inner_tol`` on ``||grad_theta F||`` or ``inner_max_iter`` steps."""

    ways: int = 5
    head: str = "logistic"
    delta: float = 0.1
    gamma: float = 1e-4
    inner_tol: float = 1e-5
    inner_max_iter: int = 50

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"AnilConfig.head must be one of {HEADS}, got {self.head!r}")
        if not self.delta > 0:
            raise ValueError(f"AnilConfig.delta must be > 0 (the inner problem must be strictly convex), got {self.delta}")
        if self.gamma < 0:
            raise ValueError(f"AnilConfig.gamma must be >= 0, got {self.gamma}")


def with_bias(phi: torch.Tensor) -> torch.Tensor:
    """``[..., h]`` → ``[..., h+1]`` with a trailing constant 1."""
    return torch.cat([phi, torch.ones_like(phi[..., :1])], dim=-1)


class AnilProblem:
    """Body lambda (flat, ``[p]``) and heads theta (flat per task, ``[q]``, q = C (h+1))."""

    form = "anil"

    def __init__(self, body: FlatModel, config: AnilConfig) -> None:
        self.body, self.config = body, config
        self.gamma, self.delta = config.gamma, config.delta
        self.classes, self.feat_dim = config.ways, body.out_features + 1

    @property
    def theta_dim(self) -> int:
        return self.classes * self.feat_dim

    def init_lambda(self, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.body.init(seed, dtype)

    def features(self, lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x [B, n, ...]`` → ``[B, n, h+1]`` (one body pass for the whole batch)."""
        return with_bias(self.body(lam, x.flatten(0, 1))).unflatten(0, x.shape[:2])

    # ---- the bilevel seam: one task's objectives on flat vectors (math.md §1) ----------------

    def inner_objective(self, theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``F_i(theta [q], lambda [p])`` on one task's train split ``x [n, ...]``."""
        return self.head_inner_objective(theta[None], self.features(lam, x[None]), y[None], w[None])[0]

    def outer_objective(self, theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``L_i(theta [q], lambda [p])`` on one task's validation split."""
        return self.head_outer_objective(theta[None], self.features(lam, x[None]), y[None], w[None])[0]

    def solve_inner(self, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``theta_i [q]`` for one task and its ``||grad_theta F_i||``."""
        with torch.no_grad():
            theta, norm = self.solve_heads(self.features(lam, x[None]), y[None], w[None])
        return theta[0], float(norm[0])

    # ---- the same in feature space, batched over tasks (theta [B, q], phi [B, n, h+1]) --------

    def example_losses(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = phi @ theta.view(-1, self.classes, self.feat_dim).mT
        if self.config.head == "ridge":
            return 0.5 * (logits - self._onehot(y, logits)).pow(2).sum(-1)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)

    def _onehot(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # F.one_hot reads the labels' maximum, which vmap (the seam's batching) cannot do.
        return (y[..., None] == torch.arange(self.classes, device=y.device)).to(like)

    def head_inner_objective(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``F_i`` per task ``[B]``."""
        return (w * self.example_losses(theta, phi, y)).sum(-1) + 0.5 * self.delta * theta.pow(2).sum(-1)

    def head_outer_objective(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``L_i`` per task ``[B]``."""
        return (w * self.example_losses(theta, phi, y)).sum(-1)

    def head_inner_grad(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``grad_theta F_i`` in closed form, ``[B, q]``; differentiable in phi (for C_i^T u)."""
        logits = phi @ theta.view(-1, self.classes, self.feat_dim).mT
        target = self._onehot(y, logits)
        resid = logits - target if self.config.head == "ridge" else torch.softmax(logits, -1) - target
        return torch.einsum("bn,bnc,bnk->bck", w, resid, phi).flatten(1) + self.delta * theta

    def head_inner_hessian(self, theta: torch.Tensor, phi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``H_i = grad^2_theta F_i`` as dense ``[B, q, q]`` (class-major flattening of Theta)."""
        b, k = phi.shape[0], self.feat_dim
        s = w[..., None, None] * self.logit_hessians(theta, phi)
        # sum_n s_n (x) phi_n phi_n^T as one batched GEMM over the examples; a 4-operand
        # einsum materialises an [n, C, C, k, k] intermediate instead.
        outer = (phi[..., :, None] * phi[..., None, :]).flatten(-2)
        h = (s.flatten(-2).mT @ outer).view(b, self.classes, self.classes, k, k).permute(0, 1, 3, 2, 4)
        q = self.theta_dim
        return h.reshape(b, q, q) + self.delta * torch.eye(q, dtype=phi.dtype, device=phi.device)

    def logit_hessians(self, theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """Per-example Hessian of the loss in the logits, ``[B, n, C, C]`` (softmax: diag(p) - p p^T;
        ridge: I)."""
        b, n, k = phi.shape
        if self.config.head == "ridge":
            return torch.eye(self.classes, dtype=phi.dtype, device=phi.device).expand(b, n, -1, -1)
        p = torch.softmax(phi @ theta.view(-1, self.classes, k).mT, -1)
        return torch.diag_embed(p) - p[..., :, None] * p[..., None, :]

    def head_inner_factor(self, theta: torch.Tensor, phi: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``U [B, q, n C]`` with ``H_i = delta I + U U^T`` (:func:`metaif.curvature.head_factor`)."""
        return head_factor(self.logit_hessians(theta, phi), phi, w)

    def head_solver(self, theta: torch.Tensor, phi: torch.Tensor, w: torch.Tensor, method: str = "auto",
                    extra_damping: float = 0.0, bases: tuple[torch.Tensor, torch.Tensor] | None = None):
        """``rhs [B, q] -> H_i^{-1} rhs``. ``method``: "woodbury" (exact, on the few-shot factor),
        "cholesky" (exact, dense), "ekfac" (math.md §13.3: per-task Kronecker eigenbasis of
        E[phi phi^T] and the true-Fisher E[g g^T], corrected eigenvalues, damping delta +
        ``extra_damping``), "ekfac-pooled" (the same on ``bases`` pooled over all tasks, from
        :meth:`ekfac_pooled_bases`), or "auto": Woodbury when the factor's rank n C is below q
        (the usual few-shot case), else Cholesky."""
        if method not in HEAD_SOLVERS:
            raise ValueError(f"head solver must be one of {HEAD_SOLVERS}, got {method!r}")
        if method == "ekfac-pooled" and bases is None:
            raise ValueError("head solver 'ekfac-pooled' needs bases=AnilProblem.ekfac_pooled_bases(...) "
                             "over all tasks")
        phi = phi.detach()
        if method == "auto":
            method = "woodbury" if phi.shape[1] * self.classes < self.theta_dim else "cholesky"
        if method == "woodbury":
            factor = self.head_inner_factor(theta, phi, w)
            return lambda rhs: woodbury_solve(factor, rhs.unsqueeze(1), self.delta).squeeze(1)
        if method in ("ekfac", "ekfac-pooled"):
            return ekfac_head_solver(self.logit_hessians(theta, phi), phi, w, self.delta + extra_damping,
                                     bases if method == "ekfac-pooled" else None)
        # Cholesky: H is SPD, and batched LU (getrs/laswp) misbehaves in this torch's MKL
        # when torch.set_num_threads(>1) was called.
        chol = torch.linalg.cholesky(self.head_inner_hessian(theta, phi, w))
        return lambda rhs: torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)

    def ekfac_pooled_bases(self, theta: torch.Tensor, phi: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """EK-FAC eigenbases ``(Q_S [C, C], Q_A [K, K])`` of the head factors pooled over the
        ``B`` tasks of ``theta [B, q]``, ``phi [B, n, K]``, ``w [B, n]``."""
        phi = phi.detach()
        return ekfac_pooled_bases(self.logit_hessians(theta, phi), phi, w)

    # ---- inner solve and adjoint -------------------------------------------------------------

    def solve_heads(self, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads ``theta_i [B, q]`` and their final ``||grad_theta F_i|| [B]`` (phi detached)."""
        phi = phi.detach()
        theta = phi.new_zeros(phi.shape[0], self.theta_dim)
        iters = 1 if self.config.head == "ridge" else self.config.inner_max_iter
        for _ in range(iters):
            grad = self.head_inner_grad(theta, phi, y, w)
            if self.config.head == "logistic" and bool((grad.norm(dim=-1) <= self.config.inner_tol).all()):
                break
            step = self.head_solver(theta, phi, w)(grad)
            theta = self._line_search(theta, step, phi, y, w)
        return theta, self.head_inner_grad(theta, phi, y, w).norm(dim=-1)

    def _line_search(self, theta, step, phi, y, w):
        """Damped Newton: halve the step per task until F does not increase (convex, so few halvings)."""
        if self.config.head == "ridge":
            return theta - step
        f0 = self.head_inner_objective(theta, phi, y, w)
        slack = 8 * torch.finfo(f0.dtype).eps * (f0.abs() + 1)  # rounding, not an increase
        scale = torch.ones_like(f0)
        for _ in range(30):
            trial = theta - scale[:, None] * step
            bad = self.head_inner_objective(trial, phi, y, w) > f0 + slack
            if not bool(bad.any()):
                break
            scale = torch.where(bad, 0.5 * scale, scale)
        return trial

    def adjoint(self, theta: torch.Tensor, phi_tr: torch.Tensor, w_tr: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """``H_i^{-1} rhs`` for ``rhs [B, q]`` (:meth:`head_solver`)."""
        return self.head_solver(theta, phi_tr, w_tr)(rhs)

    # ---- what meta-training needs -------------------------------------------------------------

    def outer_gradient(self, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """``sum_i c_i g_i`` (math.md §3) over the batch, ``[p]``, with one backward through the body.

        g_i = grad_lambda [L_i(theta_i, lambda) - u_i^T grad_theta F_i(theta_i, lambda)] with
        theta_i and the adjoint u_i = H_i^{-1} grad_theta L_i held fixed.
        """
        lam = lam.detach().requires_grad_(True)
        phi_tr, phi_val = self.features(lam, batch.x_tr), self.features(lam, batch.x_val)
        theta, inner_norm = self.solve_heads(phi_tr, batch.y_tr, batch.w_tr)
        theta_req = theta.detach().requires_grad_(True)
        outer = self.head_outer_objective(theta_req, phi_val.detach(), batch.y_val, batch.w_val)
        a = torch.autograd.grad(outer.sum(), theta_req)[0]
        u = self.adjoint(theta, phi_tr, batch.w_tr, a)
        surrogate = self.head_outer_objective(theta, phi_val, batch.y_val, batch.w_val) - (
            self.head_inner_grad(theta, phi_tr, batch.y_tr, batch.w_tr) * u).sum(-1)
        grad = torch.autograd.grad((task_weights * surrogate).sum(), lam)[0]
        weighted = float((task_weights * outer.detach()).sum())
        return grad, {"outer_loss": weighted / float(task_weights.sum()), "weighted_loss": weighted,
                      "inner_grad_norm": float(inner_norm.max())}

    def predict(self, lam: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        """Adapt each head on the train split, return validation logits ``[B, v, C]``."""
        with torch.no_grad():
            phi_tr, phi_val = self.features(lam, batch.x_tr), self.features(lam, batch.x_val)
            theta, _ = self.solve_heads(phi_tr, batch.y_tr, batch.w_tr)
            return phi_val @ theta.view(-1, self.classes, self.feat_dim).mT
