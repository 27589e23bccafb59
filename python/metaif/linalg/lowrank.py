"""Low-rank inverse from Lanczos: ``rank`` Ritz pairs of the damped operator (extremes of the
spectrum first, full re-orthogonalisation); the complement of their span is either dropped
(``floor=None``, a projection) or given one eigenvalue ``floor + damping`` (e.g. the outer weight
gamma, the identity part of the total Hessian). One factorisation serves every right-hand side."""

from __future__ import annotations

import torch

from .lanczos import lanczos
from .registry import Solver, register_solver
from .result import NotPositiveDefinite, SolveResult

__all__ = ["LowRankSolver"]


@register_solver
class LowRankSolver(Solver):
    name = "lowrank"

    def __init__(self, op, config) -> None:
        super().__init__(op, config)
        values, self.vectors = lanczos(self.matvec, op.size, torch.empty(0, dtype=op.dtype, device=op.device),
                                       config.rank, config.seed)
        if not float(values[0]) > 0:
            raise NotPositiveDefinite(f"lowrank: Ritz value {float(values[0]):.3g} <= 0; the damped operator is not "
                                      f"positive definite.")
        self.values = values.to(dtype=op.dtype, device=op.device)
        self.floor = None if config.floor is None else config.floor + self.damping
        self.info = {"ritz_values": values.tolist(), "floor": self.floor}

    def solve(self, b: torch.Tensor) -> SolveResult:
        coef = b @ self.vectors
        x = (coef / self.values) @ self.vectors.mT
        if self.floor is not None:
            x = x + (b - coef @ self.vectors.mT) / self.floor
        return SolveResult(x, self.name, self.damping, info=dict(self.info))
