"""Direct solves: form the operator by ``size`` products and factor it (exact; small ``size`` only)."""

from __future__ import annotations

import torch

from .registry import Solver, register_solver
from .result import NotPositiveDefinite, SolveResult

__all__ = ["DenseSolver", "dense_matrix"]


def dense_matrix(matvec, size: int, like: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The symmetric part of the operator as a ``[size, size]`` matrix, ``block`` columns per product."""
    eye = torch.eye(size, dtype=like.dtype, device=like.device)
    a = torch.cat([matvec(eye[start:start + block]) for start in range(0, size, block)])
    return 0.5 * (a + a.mT)


@register_solver
class DenseSolver(Solver):
    """Cholesky factor of the damped operator; raises :class:`NotPositiveDefinite` with its smallest
    eigenvalue when it has none."""

    name = "dense"

    def __init__(self, op, config) -> None:
        super().__init__(op, config)
        a = dense_matrix(self.matvec, op.size, torch.empty(0, dtype=op.dtype, device=op.device))
        self.chol, bad = torch.linalg.cholesky_ex(a)
        if int(bad):
            smallest = float(torch.linalg.eigvalsh(a)[0])
            raise NotPositiveDefinite(f"dense: the damped operator is not positive definite (smallest eigenvalue "
                                      f"{smallest:.3g}).")

    def solve(self, b: torch.Tensor) -> SolveResult:
        return SolveResult(torch.cholesky_solve(b.mT, self.chol).mT, self.name, self.damping)
