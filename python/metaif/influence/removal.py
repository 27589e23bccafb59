"""Removal predictions (math.md §6–§10): per-item lambda-gradients and what removing a task, a
validation instance or a training instance does to lambda* (task-IF, instance-IF, the direct-IF
and first-order baselines), to theta (inner-IF) and to a task's loss; the summed removal gradient
of a set that editing solves with."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..linalg import MetaifWarning
from ..meta.binding import CotangentSum
from ..meta.rows import Context
from .config import DIRECT
from .hessian import TotalHessian
from .requests import mask
from .session import Session

__all__ = ["RemovalPredictions"]

Cotangent = Callable[[torch.Tensor, torch.Tensor], Context]  # (task positions [B], onehot [B, width]) -> Context


def _scale_rows(cot: Context, c: torch.Tensor) -> Context:
    return tuple(x * c.view(-1, *([1] * (x.dim() - 1))).to(x) for x in cot)


class RemovalPredictions:
    """Removal predictions ``Δλ = λ̂_{-X} - λ*`` ``[k, p]`` (one row per item) of ``session``'s
    tasks and instances, solved with ``hessian``."""

    def __init__(self, session: Session, hessian: TotalHessian) -> None:
        self.session, self.hessian = session, hessian

    # ---- per-item gradients ------------------------------------------------------------------

    def task_gradients(self, positions=None, direct: bool = False) -> torch.Tensor:
        """Per-task total gradients ``g_i`` (partial ``b_i`` when ``direct``), ``[k, p]``."""
        s = self.session
        positions = s.positions(positions)

        def compute(select: torch.Tensor) -> torch.Tensor:
            at = positions[select]
            rows, ones = s.binding.rows(at), s.lam.new_ones(len(select))
            cot = rows.direct_cotangent(ones) if direct else rows.gradient_cotangent(ones)
            return s.binding.pull_each(cot, at)

        return s.by_owner(positions, compute)

    def _instance_gradients(self, items: torch.Tensor, width: int, cotangent: Cotangent) -> torch.Tensor:
        """Per-item lambda-gradients ``[k, p]``; ``cotangent(tasks, onehot [B, width])`` gives the
        context cotangents of a chunk of items."""
        s = self.session

        def compute(select: torch.Tensor) -> torch.Tensor:
            tasks = items[select, 0]
            onehot = torch.nn.functional.one_hot(items[select, 1], width).to(s.lam)
            return s.binding.pull_each(cotangent(tasks, onehot), tasks)

        return s.by_owner(items[:, 0], compute)

    def val_gradients(self, items, direct: bool = False) -> torch.Tensor:
        """``D_lambda l(z')`` of validation instances ``items [k, 2]`` (the partial ``grad_lambda
        l(z')`` with theta held fixed when ``direct``), ``[k, p]`` (math.md §7)."""
        s = self.session
        items = s.pairs(items, "val")

        def cotangent(tasks, onehot):
            rows, ones = s.binding.rows(tasks, w_val=onehot), s.lam.new_ones(len(tasks))
            return rows.direct_cotangent(ones) if direct else rows.gradient_cotangent(ones)

        return self._instance_gradients(items, s.tasks.y_val.shape[1], cotangent)

    def train_gradients(self, items) -> torch.Tensor:
        """``D_lambda [a_k^T H_k^{-1} grad_theta l(z)]`` of training instances ``items [k, 2]``, ``[k, p]`` (§10)."""
        s = self.session
        items = s.pairs(items, "train")

        def cotangent(tasks, onehot):
            return s.binding.rows(tasks).train_cotangent(onehot, s.config.third_order_train)

        return self._instance_gradients(items, s.tasks.y_train.shape[1], cotangent)

    def _val_weights(self, items: torch.Tensor) -> torch.Tensor:
        """``c_k w_kj`` of validation instances ``items [k, 2]``, ``[k]``."""
        s = self.session
        return s.c[items[:, 0]] * s.weights.w_val[items[:, 0], items[:, 1]]

    # ---- removal predictions -----------------------------------------------------------------

    def task_influence(self, positions=None, variant: str | None = None) -> torch.Tensor:
        """task-IF removal predictions ``Δλ_k = c_k H^{-1} g_k`` (math.md §6), ``[k, p]``."""
        s = self.session
        variant, positions = s.variant(variant), s.positions(positions)
        return s.c[positions, None] * self.hessian.solve(self.task_gradients(positions), variant)

    def direct_influence(self, positions=None) -> torch.Tensor:
        """The direct IF of tasks (eq. 6, theta held fixed): ``c_k H_dir^{-1} grad_lambda L_k``, ``[k, p]``."""
        s = self.session
        positions = s.positions(positions)
        b = self.task_gradients(positions, direct=True)
        if not bool(b.abs().sum() > 0):
            warnings.warn("the direct IF is identically 0 for this form (lambda enters the outer loss only "
                          "through theta, math.md §6); use first_order_influence as a baseline", MetaifWarning,
                          stacklevel=3)
            return b
        return s.c[positions, None] * self.hessian.solve(b, DIRECT)

    def direct_val_influence(self, items) -> torch.Tensor:
        """The direct IF of validation instances: ``c_k w_kj H_dir^{-1} grad_lambda l(z')`` with theta
        held fixed (math.md §7's partial-gradient variant), ``[k, p]``."""
        items = self.session.pairs(items, "val")
        grads = self.val_gradients(items, direct=True)
        return self._val_weights(items)[:, None] * self.hessian.solve(grads, DIRECT)

    def first_order_influence(self, positions=None) -> torch.Tensor:
        """The J := I baseline (math.md §6): ``g_i ~ a_i``, ``H ~ gamma I + sum_i c_i grad^2_theta L_i``;
        only where theta and lambda share a space (iMAML), ``[k, p]``."""
        s = self.session
        solver = self.hessian.first_order_solver()
        positions = s.positions(positions)
        a = s.by_owner(positions, lambda select: s.binding.rows(positions[select]).outer_theta_grad(),
                       (s.binding.theta.shape[1],))
        return s.c[positions, None] * solver.solve(a).x

    def first_order_val_influence(self, items) -> torch.Tensor:
        """The J := I baseline for validation instances: ``c_k w_kj (gamma I + sum_i c_i
        grad^2_theta L_i)^{-1} grad_theta l(z'_kj)``; only where theta and lambda share a space
        (iMAML), ``[k, p]``."""
        s = self.session
        solver = self.hessian.first_order_solver()
        items = s.pairs(items, "val")
        width = s.tasks.y_val.shape[1]

        def compute(select: torch.Tensor) -> torch.Tensor:
            onehot = torch.nn.functional.one_hot(items[select, 1], width).to(s.lam)
            return s.binding.rows(items[select, 0], w_val=onehot).outer_theta_grad()

        a = s.by_owner(items[:, 0], compute, (s.binding.theta.shape[1],))
        return self._val_weights(items)[:, None] * solver.solve(a).x

    def val_influence(self, items, variant: str | None = None) -> torch.Tensor:
        """Validation instance-IF removal predictions ``c_k w_kj H^{-1} D_lambda l(z')``, ``[k, p]``."""
        s = self.session
        variant, items = s.variant(variant), s.pairs(items, "val")
        return self._val_weights(items)[:, None] * self.hessian.solve(self.val_gradients(items), variant)

    def train_influence(self, items, variant: str | None = None) -> torch.Tensor:
        """Training instance-IF removal predictions ``-c_k w_kj H^{-1} D_lambda P/w``, ``[k, p]`` (§10)."""
        s = self.session
        variant = s.variant(variant)
        items = s.pairs(items, "train")
        w = s.c[items[:, 0]] * s.weights.w_tr[items[:, 0], items[:, 1]]
        return -w[:, None] * self.hessian.solve(self.train_gradients(items), variant)

    def inner_influence(self, items) -> torch.Tensor:
        """inner-IF ``d theta_k / d eps`` of up-weighting training point j of task k (math.md §8:
        ``-H_k^{-1} grad_theta l(z)``; §14(c)'s tangent recursion for an unrolled map), ``[k, q]``."""
        s = self.session
        width = s.tasks.y_train.shape[1]
        items = s.pairs(items, "train")

        def compute(select: torch.Tensor) -> torch.Tensor:
            rows = s.binding.rows(items[select, 0])
            return rows.inner_tangent(torch.nn.functional.one_hot(items[select, 1], width).to(s.lam))

        return s.by_owner(items[:, 0], compute, (s.binding.theta.shape[1],))

    def loss_difference(self, items) -> torch.Tensor:
        """math.md §9: predicted change of task k's validation loss when training point j leaves
        its inner problem (lambda fixed), ``-w_kj grad_theta L_k^T d theta_k / d eps`` (for an argmin
        ``P = w_kj u_k^T grad_theta l(z_kj)``), ``[k]``."""
        s = self.session
        width = s.tasks.y_train.shape[1]
        items = s.pairs(items, "train")

        def compute(select: torch.Tensor) -> torch.Tensor:
            rows = s.binding.rows(items[select, 0])
            tangent = rows.inner_tangent(torch.nn.functional.one_hot(items[select, 1], width).to(s.lam))
            w = s.weights.w_tr[items[select, 0], items[select, 1]]
            return -w * (rows.outer_theta_grad() * tangent).sum(-1)

        return s.by_owner(items[:, 0], compute, ())

    # ---- a removal set -----------------------------------------------------------------------

    def removal_gradient(self, tasks=(), val=(), train=(), direct: bool = False) -> torch.Tensor:
        """``sum_X w_X (d/dw_X) D_lambda L`` over a removal set (so that ``Δλ = H^{-1}`` of it), ``[p]``;
        ``direct`` uses partial gradients (theta held fixed; tasks and validation instances only)."""
        s = self.session
        task_mask = s.lam.new_zeros(len(s.tasks))
        task_mask[s.positions(tasks, "removed tasks")] = 1.0
        total = self.hessian.gradient(s.c * task_mask, direct=direct)
        if direct and len(train):
            raise ValueError("the direct IF has no training instances (they reach lambda only through theta)")
        if len(val):
            def val_cotangent(touched: torch.Tensor, w_val: torch.Tensor) -> Context:
                rows = s.binding.rows(touched, w_val=w_val)
                return rows.direct_cotangent(s.c[touched]) if direct else rows.gradient_cotangent(s.c[touched])

            total = total + self._pulled(s.pairs(val, "val"), s.weights.w_val, val_cotangent)
        if len(train):
            def train_cotangent(touched: torch.Tensor, w_tr: torch.Tensor) -> Context:
                cot = s.binding.rows(touched).train_cotangent(w_tr, s.config.third_order_train)
                return _scale_rows(cot, s.c[touched])

            total = total - self._pulled(s.pairs(train, "train"), s.weights.w_tr, train_cotangent)
        return total

    def _pulled(self, items: torch.Tensor, weights: torch.Tensor,
                cotangent: Cotangent) -> torch.Tensor:
        """The lambda-space sum ``[p]`` of the context cotangents of the instances ``items [k, 2]``:
        ``cotangent(touched, w)`` of this rank's touched tasks, a chunk of tasks at a time, with
        ``weights`` kept only at the items."""
        s = self.session
        touched = s.own(torch.unique(items[:, 0]))
        kept = weights * mask(items, weights)
        total = CotangentSum(s.binding)
        groups = touched // s.bound.chunk
        for group in torch.unique_consecutive(groups):
            tasks = touched[groups == group]
            total.add(cotangent(tasks, kept[tasks]), tasks)
        return s.binding.pull(total.total())
