"""Influence scores on new tasks (math.md §12) and projections of removal predictions: one
directional derivative of every item's removal gradient, for the total IF and the direct IF."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tasks import TaskSet
from ..meta.batch import Weights
from .config import DIRECT
from .hessian import TotalHessian
from .session import Session

__all__ = ["ScoreComputer", "Scores"]


@dataclass
class Scores:
    """Predicted test-loss change on removal (math.md §12): ``tasks [m]``, ``val [m, v]``,
    ``train [m, n]``; negative = harmful. Zero-weight items score 0."""

    tasks: torch.Tensor
    val: torch.Tensor
    train: torch.Tensor


class ScoreComputer:
    """Scores and projections of every task and instance of ``session``, solved with ``hessian``."""

    def __init__(self, session: Session, hessian: TotalHessian) -> None:
        self.session, self.hessian = session, hessian

    def test_gradient(self, test: TaskSet, partial: bool = False) -> torch.Tensor:
        """``D_lambda f`` of the mean query loss over ``test`` tasks after adaptation (math.md §12),
        or the partial ``grad_lambda f`` with ``partial=True``, ``[p]``."""
        s = self.session
        weights = Weights.uniform(test, s.lam.dtype, s.lam.device)
        return s.bind(s.lam, weights, tasks=test).gradient(weights.c, direct=partial)

    def directional(self, r: torch.Tensor, direct: bool = False) -> Scores:
        """``r^T`` of every item's removal gradient, scaled to removal predictions: for the
        projection ``r^T Δλ_X`` pass ``r = H^{-1} d``; for scores ``r = H^{-1} D_lambda f``.
        ``direct``: the direct IF's partial gradients (theta held fixed); training instances then
        score 0 (the direct IF has none)."""
        s = self.session
        tangent = s.binding.tangent(r)
        tasks, val, train = [], [], []
        for idx, rows in zip(s.bound.chunks, s.bound.rows):
            along = s.binding.context_tangent(tangent, idx)
            t, v, *tr = rows.direct_directional(along) if direct else \
                rows.directional(along, s.config.third_order_train)
            c = s.c[idx]
            tasks.append(c * t)
            val.append(c[:, None] * s.weights.w_val[idx].to(v) * v)
            train.extend(-c[:, None] * s.weights.w_tr[idx].to(x) * x for x in tr)
        gathered = [s.world.gather_parts(part, s.lam) for part in (tasks, val)]
        if direct:
            return Scores(*gathered, torch.zeros_like(s.weights.w_tr, dtype=s.lam.dtype))
        return Scores(*gathered, s.world.gather_parts(train, s.lam))

    def scores(self, test: TaskSet, partial: bool = False, variant: str | None = None) -> Scores:
        """Influence scores on new tasks (math.md §12), one solve (s_test): predicted change of
        the test loss when each task / instance is removed; negative = harmful."""
        variant = self.session.variant(variant)
        r = self.hessian.solve(self.test_gradient(test, partial)[None], variant)[0]
        return self.directional(r)

    def direct_scores(self, test: TaskSet) -> Scores:
        """Scores of the direct IF (theta held fixed, partial gradients and the direct Hessian):
        tasks ``[m]`` and validation instances ``[m, v]``; training instances score 0."""
        r = self.hessian.solve(self.test_gradient(test, partial=True)[None], DIRECT)[0]
        return self.directional(r, direct=True)

    def projections(self, directions: torch.Tensor, variant: str | None = None) -> list[Scores]:
        """Predicted ``d^T Δλ_X`` for every item and each direction ``d`` of ``directions [k, p]``."""
        return [self.directional(r) for r in self.hessian.solve(directions, self.session.variant(variant))]
