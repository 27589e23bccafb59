"""MINRES for symmetric, possibly indefinite operators (math.md §13.1), e.g. the ``gn`` variant
of the total Hessian, whose second-order part can have negative eigenvalues.

Paige and Saunders' recurrences without a preconditioner, vectorised over the columns of the
right-hand side (each column its own Lanczos process); the reported residual is recomputed from
``x`` at the end.
"""

from __future__ import annotations

import torch

from .registry import Solver, register_solver, relative_residual
from .result import SolveResult

__all__ = ["MinresSolver"]


@register_solver
class MinresSolver(Solver):
    """Minimal residual over the Krylov space of each column; needs symmetry, not definiteness."""

    name = "minres"

    def solve(self, b: torch.Tensor) -> SolveResult:
        tiny = torch.finfo(torch.float64).tiny
        bd = b.double()
        beta1 = bd.norm(dim=1)                      # [k]
        active = beta1 > 0
        x = torch.zeros_like(bd)
        r1, r2, y = bd.clone(), bd.clone(), bd.clone()
        w, w2 = torch.zeros_like(bd), torch.zeros_like(bd)
        zero = torch.zeros_like(beta1)
        beta, oldb, dbar, epsln, phibar = beta1.clone(), zero.clone(), zero.clone(), zero.clone(), beta1.clone()
        cs, sn = -torch.ones_like(beta1), zero.clone()
        iterations = torch.zeros(len(b), dtype=torch.int64, device=b.device)
        target = self.config.rtol * beta1
        for itn in range(self.config.max_iter):
            if not bool(active.any()):
                break
            v = torch.where(active[:, None], y / beta.clamp_min(tiny)[:, None], 0.0)
            y = torch.zeros_like(v)
            y[active] = self.matvec(v[active].to(b.dtype)).double()
            if itn > 0:
                y = y - (beta / oldb.clamp_min(tiny))[:, None] * r1
            alfa = (v * y).sum(1)
            y = y - (alfa / beta.clamp_min(tiny))[:, None] * r2
            r1, r2 = r2, y
            oldb, beta = beta, y.norm(dim=1)
            oldeps = epsln
            delta = cs * dbar + sn * alfa
            gbar = sn * dbar - cs * alfa
            epsln = sn * beta
            dbar = -cs * beta
            gamma = torch.sqrt(gbar**2 + beta**2).clamp_min(tiny)
            cs, sn = gbar / gamma, beta / gamma
            phi = torch.where(active, cs * phibar, 0.0)
            phibar = torch.where(active, sn * phibar, phibar)
            w1, w2 = w2, w
            w = (v - oldeps[:, None] * w1 - delta[:, None] * w2) / gamma[:, None]
            x = x + torch.where(active[:, None], phi[:, None] * w, 0.0)
            iterations += active.long()
            # phibar estimates ||b - A x||; an exact Krylov space (beta = 0) also ends the column
            active = active & (phibar > target) & (beta > tiny)
        x = x.to(b.dtype)
        residual = relative_residual(self.matvec, b, x)
        return SolveResult(x, self.name, self.damping, bool((residual <= self.config.rtol).all()), residual,
                           iterations)
