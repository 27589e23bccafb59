"""Conjugate gradient with an honest residual (math.md §13.1).

The recursively updated residual of CG drifts from ``b - A x`` in floating point (and on a
singular operator it can claim convergence that never happened). Here every column that claims
convergence is checked against its true residual, recomputed from ``x``, and after a false claim
continues from it (residual replacement, as also every ``replace_every`` iterations); a column
whose true residual no longer falls by 1% over three false claims stops there (the tolerance is
out of this precision's reach). The reported residual is always a true one.

This is the generic-operator version (any ``matvec``, preconditioning, column masking); the compiled
``cg_dense`` / ``cg_ce_head`` kernels follow the same rules with the same constants, named below as
``include/metaif/arith.h`` names them (a test reads the header and compares).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ops import CGResult
from .lanczos import lanczos
from .registry import Solver, register_solver
from .result import NotPositiveDefinite, SolveResult

__all__ = ["CGSolver", "REPLACE_EVERY", "STALLS", "STALL_PROGRESS", "conjugate_gradient"]

REPLACE_EVERY = 50    # arith::kReplaceEvery: iterations between residual replacements
STALLS = 3            # arith::kStalls: false convergence claims without progress that stop a column
STALL_PROGRESS = 0.98  # arith::cg_stalled: a true residual^2 below this times the best one is progress


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.double() * y.double()).flatten(2).sum(-1)


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, rtol: float,
                       max_iter: int, replace_every: int = REPLACE_EVERY,
                       precond: Callable[[torch.Tensor], torch.Tensor] | None = None) -> CGResult:
    """Solve ``A_t x = b[t, c]`` for a batch of operators ``A_t`` (``matvec: [T, B, *s] -> [T, B, *s]``),
    each column converging on its own to ``||b - A x|| <= rtol ||b||`` (true residual).

    With ``T == 1`` the products run on the active columns only (``matvec`` must then accept any
    number of columns). ``precond`` applies an SPD approximation of ``A^{-1}`` (preconditioned CG).
    Raises :class:`NotPositiveDefinite` on non-positive curvature ``p.Ap``. Reductions are
    float64; ``resid`` is float64.
    """
    tasks, batch = b.shape[:2]
    shape = (tasks, batch) + (1,) * (b.dim() - 2)

    def apply(v: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if tasks == 1 and not bool(rows.all()):
            out = torch.zeros_like(v)
            out[:, rows] = matvec(v[:, rows])
            return out
        return matvec(v)

    def scaled(coef: torch.Tensor) -> torch.Tensor:
        return coef.to(b.dtype).view(shape)

    def prec(v: torch.Tensor) -> torch.Tensor:
        return v if precond is None else precond(v)

    x, r = torch.zeros_like(b), b.clone()
    z = prec(r)
    p = z.clone()
    rs, rz = _dot(r, r), _dot(r, z)
    target = rtol * rs.sqrt()
    active = rs > 0
    best_false = torch.full_like(rs, float("inf"))
    stalls = torch.zeros_like(rs, dtype=torch.int64)
    iterations = torch.zeros(tasks, batch, dtype=torch.int64, device=b.device)
    for k in range(max_iter):
        if not bool(active.any()):
            break
        ap = apply(p, active.any(0))
        curvature = _dot(p, ap)
        bad = active & ~(curvature > 0)
        if bool(bad.any()):
            t, c = (int(i) for i in torch.nonzero(bad)[0])
            raise NotPositiveDefinite(f"conjugate gradient met curvature p.Ap = {float(curvature[t, c]):.3g} <= 0 at "
                                      f"iteration {k} (task {t}, column {c}): the operator is not positive definite.")
        alpha = torch.where(active, rz / curvature.where(active, torch.ones_like(curvature)), 0.0)
        x = x + scaled(alpha) * p
        r = r - scaled(alpha) * ap
        iterations += active.long()
        rs_new = _dot(r, r)
        z = prec(r)
        rz_new = _dot(r, z)
        beta = torch.where(active, rz_new / rz.where(active, torch.ones_like(rz)), 0.0)
        claims = active & (rs_new.sqrt() <= target)
        stop = claims
        checked = claims | (active if (k + 1) % replace_every == 0 else torch.zeros_like(active))
        if bool(checked.any()):  # replace the recursive residual by the true one
            true_r = b - apply(x, checked.any(0))
            r = torch.where(checked.view(shape), true_r, r)
            rs_new = torch.where(checked, _dot(true_r, true_r), rs_new)
            z = prec(r)
            rz_new = torch.where(checked, _dot(r, z), rz_new)
            false_claim = claims & (rs_new.sqrt() > target)
            improved = false_claim & (rs_new < STALL_PROGRESS * best_false)
            best_false = torch.where(improved, rs_new, best_false)
            stalls = torch.where(improved, 0, stalls) + false_claim.long()
            stop = (claims & ~false_claim) | (false_claim & (stalls > STALLS))
        going = active & ~stop
        p = torch.where(going.view(shape), z + scaled(torch.where(going, beta, 0.0)) * p, p)
        rs, rz = torch.where(active, rs_new, rs), torch.where(active, rz_new, rz)
        active = going
    if bool(active.any()):  # stopped by max_iter: report the true residual of what we return
        true_r = b - apply(x, active.any(0))
        rs = torch.where(active, _dot(true_r, true_r), rs)
    b_norm = _dot(b, b).sqrt()
    residual = torch.where(b_norm > 0, rs.sqrt() / b_norm.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return CGResult(x, iterations, residual, residual <= rtol)


@register_solver
class CGSolver(Solver):
    """Conjugate gradient on all right-hand sides at once (block products over active columns)."""

    name = "cg"

    def __init__(self, op, config) -> None:
        super().__init__(op, config)
        self.precond = SpectralPreconditioner(self.matvec, op, config.precondition, config.seed) \
            if config.precondition else None

    def solve(self, b: torch.Tensor) -> SolveResult:
        precond = None if self.precond is None else (lambda v: self.precond(v[0])[None])
        res = conjugate_gradient(lambda v: self.matvec(v[0])[None], b[None], self.config.rtol, self.config.max_iter,
                                 precond=precond)
        info = {} if self.precond is None else {"precondition_rank": self.precond.rank,
                                                "precondition_products": self.precond.products}
        return SolveResult(res.x[0], self.name, self.damping, bool(res.converged.all()), res.resid[0], res.iters[0],
                           info)


class SpectralPreconditioner:
    """``M^{-1} = V diag(1/theta) V^T + (I - V V^T) / sigma`` from ``rank`` Lanczos Ritz pairs
    ``(theta, V)`` of the damped operator, ``sigma`` the smallest Ritz value: the captured extremes
    of the spectrum map to about 1 and the rest is scaled as a whole, so CG's iterations follow
    the remaining spread. Built once (``rank`` products) and reused by every solve."""

    def __init__(self, matvec, op, rank: int, seed: int = 0) -> None:
        values, self.vectors = lanczos(matvec, op.size, torch.empty(0, dtype=op.dtype, device=op.device), rank, seed)
        if not float(values[0]) > 0:
            raise NotPositiveDefinite(f"cg preconditioner: Ritz value {float(values[0]):.3g} <= 0; the damped operator "
                                      f"is not positive definite.")
        self.rank, self.products = len(values), len(values)
        self.sigma = float(values[0])
        self.shift = (1.0 / values - 1.0 / self.sigma).to(dtype=op.dtype, device=op.device)

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """``M^{-1} r`` for ``r [k, size]``."""
        coef = r @ self.vectors
        return r / self.sigma + (coef * self.shift) @ self.vectors.mT
