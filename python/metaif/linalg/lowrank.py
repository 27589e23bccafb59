"""Low-rank inverse from Lanczos: ``rank`` Ritz pairs of the damped operator (extremes of the
spectrum first, full re-orthogonalisation); the complement of their span is either dropped
(``floor=None``, a projection) or given one eigenvalue ``floor + damping`` (e.g. the outer weight
gamma, the identity part of the total Hessian). One factorisation serves every right-hand side."""

from __future__ import annotations

import torch

from .registry import Solver, register_solver
from .result import NotPositiveDefinite, SolveResult

__all__ = ["LowRankSolver"]


@register_solver
class LowRankSolver(Solver):
    name = "lowrank"

    def __init__(self, op, config) -> None:
        super().__init__(op, config)
        k = min(config.rank, op.size)
        q = torch.randn(op.size, generator=torch.Generator().manual_seed(config.seed), dtype=torch.float64)
        q = q.to(dtype=op.dtype, device=op.device)
        basis, alphas, betas = [q / q.norm()], [], []
        for j in range(k):
            w = self.matvec(basis[j][None])[0]
            alphas.append(float(basis[j] @ w))
            stacked = torch.stack(basis)
            w = w - stacked.mT @ (stacked @ w)   # full re-orthogonalisation, twice for stability
            w = w - stacked.mT @ (stacked @ w)
            beta = float(w.norm())
            if j + 1 == k or beta <= 1e-10 * abs(alphas[0]):
                break
            betas.append(beta)
            basis.append(w / beta)
        t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            t = t + torch.diag(off, 1) + torch.diag(off, -1)
        values, vecs = torch.linalg.eigh(t)
        if not float(values[0]) > 0:
            raise NotPositiveDefinite(f"lowrank: Ritz value {float(values[0]):.3g} <= 0; the damped operator is not "
                                      f"positive definite.")
        self.vectors = torch.stack(basis).mT @ vecs.to(dtype=op.dtype, device=op.device)
        self.values = values.to(dtype=op.dtype, device=op.device)
        self.floor = None if config.floor is None else config.floor + self.damping
        self.info = {"ritz_values": values.tolist(), "floor": self.floor}

    def solve(self, b: torch.Tensor) -> SolveResult:
        coef = b @ self.vectors
        x = (coef / self.values) @ self.vectors.mT
        if self.floor is not None:
            x = x + (b - coef @ self.vectors.mT) / self.floor
        return SolveResult(x, self.name, self.damping, info=dict(self.info))
