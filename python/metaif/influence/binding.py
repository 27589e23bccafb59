"""Bindings: where a problem's lambda meets the per-row algebra of :mod:`metaif.influence.local`.

A binding solves every inner problem once at lambda*, then serves :class:`~.local.Rows` for any
slice of tasks, context tangents of a direction ``v [p]``, and the pull-back of context
cotangents to lambda-space.

* :class:`BodyBinding` (form (b), :class:`~metaif.meta.AnilProblem`): the context is the features
  of the task's images. Tasks resample the same images, so every body pass (forward, JVP, VJP and
  the body's own second-order term) runs once per *unique* image, on cotangents summed over the
  tasks that use it; per-task work stays in feature space.
* :class:`SeamBinding` (any problem with the flat-vector seam, iMAML included): the context is
  lambda itself; the row objectives are the seam's, vmapped over tasks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jvp, vmap

from .. import reference
from ..data.tasks import TaskSet
from ..meta.anil import AnilProblem, with_bias
from ..meta.batch import Weights
from ..models.second_order import body_passes
from .local import Context, Rows


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield torch.arange(start, min(start + size, n))


class BodyBinding:
    """Form (b): lambda is the body, theta_i the head; ``image_chunk`` bounds body-pass memory;
    ``inner`` picks the head iHVP (:meth:`AnilProblem.head_solver`); ``passes`` the body passes
    (:func:`~metaif.models.second_order.body_passes`: hand-written for Conv/Linear/ReLU/pool
    bodies, autograd for the rest). The passes keep per-image state for the whole analysis
    (about 350 KB per 28x28 image on 64-channel Conv-4, float32)."""

    def __init__(self, problem: AnilProblem, lam: torch.Tensor, tasks: TaskSet, weights: Weights,
                 image_chunk: int = 1024, inner: str = "auto", inner_damping: float = 0.0,
                 passes: str = "auto") -> None:
        self.problem, self.lam, self.weights = problem, lam.detach(), weights
        self.inner, self.inner_damping = inner, inner_damping
        self._g: torch.Tensor | None = None  # the cotangent the passes hold
        used = torch.cat([tasks.train_index.flatten(), tasks.val_index.flatten()])
        unique, inverse = torch.unique(used, return_inverse=True)
        m, n = tasks.train_index.shape
        self.pos_tr = inverse[: m * n].view(m, n)
        self.pos_val = inverse[m * n:].view(tasks.val_index.shape)
        images = tasks.images[unique].to(lam.dtype)
        self.chunks = list(_chunks(images.shape[0], image_chunk))
        self.passes = [body_passes(problem.body, self.lam, images[rows], passes) for rows in self.chunks]
        self.phi = with_bias(torch.cat([p.phi for p in self.passes]))
        self.images, self.y_tr, self.y_val = images, tasks.y_train, tasks.y_val
        with torch.no_grad():
            self.theta, self.inner_norm = problem.solve_heads(self.phi[self.pos_tr], self.y_tr, weights.w_tr)
        self.bases = problem.ekfac_pooled_bases(self.theta, self.phi[self.pos_tr], weights.w_tr) \
            if inner == "ekfac-pooled" else None

    @property
    def num_images(self) -> int:
        return self.images.shape[0]

    def rows(self, idx: torch.Tensor, w_val: torch.Tensor | None = None) -> Rows:
        prob = self.problem
        y_tr, y_val = self.y_tr[idx], self.y_val[idx]
        xi = (self.phi[self.pos_tr[idx]], self.phi[self.pos_val[idx]])
        w_val = self.weights.w_val[idx] if w_val is None else w_val
        solve = prob.head_solver(self.theta[idx], xi[0], self.weights.w_tr[idx], self.inner, self.inner_damping,
                                 self.bases)

        def inner_grad(theta, xi, w):
            return prob.head_inner_grad(theta, xi[0], y_tr, w)

        def outer(theta, xi, w):
            return prob.head_outer_objective(theta, xi[1], y_val, w)

        return Rows(self.theta[idx], xi, self.weights.w_tr[idx], w_val, solve, inner_grad, outer)

    def tangent(self, v: torch.Tensor) -> torch.Tensor:
        """Feature tangents of every unique image along ``v``, ``[U, h+1]`` (the bias feature's is 0)."""
        return F.pad(torch.cat([p.tangent(v) for p in self.passes]), (0, 1))

    def context_tangent(self, tangent: torch.Tensor, idx: torch.Tensor) -> Context:
        return tangent[self.pos_tr[idx]], tangent[self.pos_val[idx]]

    def zeros(self) -> torch.Tensor:
        return self.phi.new_zeros(self.phi.shape)

    def scatter(self, into: torch.Tensor, cot: Context, idx: torch.Tensor) -> None:
        """Add row cotangents into the per-image buffer ``[U, h+1]``."""
        width = into.shape[1]
        into.index_add_(0, self.pos_tr[idx].flatten(), cot[0].reshape(-1, width))
        into.index_add_(0, self.pos_val[idx].flatten(), cot[1].reshape(-1, width))

    def pull(self, m: torch.Tensor, g: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """``J_phi^T m + d/dlambda <g, J_phi v>`` over the unique images, ``[p]``.

        ``g`` (the context gradient of K at lambda*) is the same for every product of a solve, so
        the passes take it once and keep what depends on it.
        """
        if g is not None and (self._g is None or not torch.equal(g, self._g)):
            for rows, p in zip(self.chunks, self.passes):
                p.cotangent(g[rows, :-1])
            self._g = g.clone()
        return sum(p.pull(m[rows, :-1], v) for rows, p in zip(self.chunks, self.passes))

    def pull_each(self, cot: Context, idx: torch.Tensor) -> torch.Tensor:
        """One lambda-gradient per row, ``[B, p]``, through the row's own images."""
        images = torch.cat([self.images[self.pos_tr[idx]], self.images[self.pos_val[idx]]], dim=1)
        cot = torch.cat(cot, dim=1)

        def one(x, c):
            return grad(lambda la: (c * with_bias(self.problem.body(la, x))).sum())(self.lam)

        return vmap(one)(images, cot)


class SeamBinding:
    """Any problem exposing ``solve_inner``, ``inner_objective`` and ``outer_objective`` on flat
    vectors. Inner solves are dense Cholesky when ``q <= dense_max``, else CG on autograd HVPs."""

    def __init__(self, problem, lam: torch.Tensor, tasks: TaskSet, weights: Weights, dense_max: int = 2000,
                 cg_rtol: float = 1e-10, cg_max_iter: int = 500) -> None:
        # lambda and every tangent get fresh storage: forward AD tangents of the expanded
        # per-row lambda must share its layout (a view into another buffer, e.g. a column of
        # the dense solver's identity, would be copied into the stride-0 expansion and fail)
        self.problem, self.lam, self.weights = problem, lam.detach().clone(), weights
        self.x_tr, self.x_val = tasks.x_train.to(lam.dtype), tasks.x_val.to(lam.dtype)
        self.y_tr, self.y_val = tasks.y_train, tasks.y_val
        self.cg_rtol, self.cg_max_iter = cg_rtol, cg_max_iter
        solved = [problem.solve_inner(self.lam, self.x_tr[i], self.y_tr[i], weights.w_tr[i]) for i in range(len(tasks))]
        self.theta = torch.stack([s[0] for s in solved])
        self.inner_norm = torch.tensor([s[1] for s in solved])
        self._inner_grad = vmap(grad(problem.inner_objective, argnums=0))
        self._outer = vmap(problem.outer_objective)
        self.dense = self.theta.shape[1] <= dense_max
        if self.dense:
            h = vmap(hessian(problem.inner_objective, argnums=0))(
                self.theta, self.lam.expand(len(tasks), -1), self.x_tr, self.y_tr, weights.w_tr)
            self.chol = torch.linalg.cholesky(0.5 * (h + h.mT))

    def rows(self, idx: torch.Tensor, w_val: torch.Tensor | None = None) -> Rows:
        x_tr, y_tr, x_val, y_val = self.x_tr[idx], self.y_tr[idx], self.x_val[idx], self.y_val[idx]
        theta, w_tr = self.theta[idx], self.weights.w_tr[idx]
        lam_rows = self.lam.expand(len(idx), -1)
        w_val = self.weights.w_val[idx] if w_val is None else w_val

        def inner_grad(th, xi, w):
            return self._inner_grad(th, xi[0], x_tr, y_tr, w)

        def outer(th, xi, w):
            return self._outer(th, xi[0], x_val, y_val, w)

        if self.dense:
            chol = self.chol[idx]

            def solve(rhs):
                return torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)
        else:
            def matvec(vec):  # [B, 1, q]
                return jvp(lambda th: inner_grad(th, (lam_rows,), w_tr), (theta,), (vec[:, 0],))[1].unsqueeze(1)

            def solve(rhs):
                res = reference.cg(matvec, rhs.unsqueeze(1), self.cg_rtol, self.cg_max_iter)
                return res.x.squeeze(1)

        return Rows(theta, (lam_rows,), w_tr, w_val, solve, inner_grad, outer)

    def tangent(self, v: torch.Tensor) -> torch.Tensor:
        return v.clone()

    def context_tangent(self, tangent: torch.Tensor, idx: torch.Tensor) -> Context:
        return (tangent.expand(len(idx), -1),)

    def zeros(self) -> torch.Tensor:
        return torch.zeros_like(self.lam)

    def scatter(self, into: torch.Tensor, cot: Context, idx: torch.Tensor) -> None:
        into += cot[0].sum(0)

    def pull(self, m: torch.Tensor, g: torch.Tensor | None = None, v: torch.Tensor | None = None) -> torch.Tensor:
        """The context is lambda: the pull-back is the identity and has no second-order term."""
        return m.clone()

    def pull_each(self, cot: Context, idx: torch.Tensor) -> torch.Tensor:
        return cot[0]
