"""Conjugate gradient with an honest residual (math.md §13.1).

The recursively updated residual of CG drifts from ``b - A x`` in floating point (and on a
singular operator it can claim convergence that never happened). Here every column that claims
convergence is checked against its true residual, recomputed from ``x``, and after a false claim
continues from it (residual replacement, as also every ``replace_every`` iterations); a column
whose true residual no longer falls by 1% over three false claims stops there (the tolerance is
out of this precision's reach). The reported residual is always a true one.

The rounding floor: in float32 the true residual of a well-solved system stalls near the rounding
noise of one product, ``||fl(A x) - A x||``, about eps times ``||A|| ||x||`` (so about eps times the
condition number relative to ``b``), and iterating further can carry ``x`` away again. So ``x`` is
the iterate of smallest true residual seen at a check, and where a check makes no progress the noise
is measured from the linearity defect of two more products, ``A x + A y - A(x + y)`` for a random
``y`` of the norm of ``x`` (three independent noises, hence the division by sqrt 3); a column that
makes no progress within ``FLOOR_MARGIN`` of it stops there, as accurate as the precision allows,
and reports it.

This is the generic-operator version (any ``matvec``, preconditioning, column masking). The compiled
``cg_dense`` / ``cg_ce_head`` kernels (``include/metaif/task_solvers.cuh``) follow its replacement and
stall rules with the same constants, named below as ``include/metaif/arith.h`` names them (a test
reads the header and compares), and return their best checked iterate too; the rounding-floor
measurement is this version's only: the kernels count every check without progress as a stall.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ops import CGResult
from ..utils.progress import stage
from .lanczos import lanczos
from .registry import Solver, register_solver
from .result import NotPositiveDefinite, SolveResult, within_floor

__all__ = ["CGSolver", "CLAIM_WINDOW", "REPLACE_EVERY", "STALLS", "STALL_PROGRESS", "conjugate_gradient",
           "reached", "rounding_noise"]

REPLACE_EVERY = 50    # arith::kReplaceEvery: iterations between residual replacements
STALLS = 3            # arith::kStalls: false convergence claims without progress that stop a column
STALL_PROGRESS = 0.98  # arith::cg_stalled: a true residual^2 below this times the best one is progress
CLAIM_WINDOW = 10     # iterations after a false claim before a column's next claim is checked


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.double() * y.double()).flatten(2).sum(-1)


def rounding_noise(apply: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, ax: torch.Tensor,
                   seed: int = 0) -> torch.Tensor:
    """``[T, B]`` float64: the norm of the rounding error of one product ``A x`` (``x, ax [T, B, *s]``,
    ``ax`` the computed ``A x``), from the linearity defect ``A x + A y - A(x + y)`` of a random ``y``
    with ``||y|| = ||x||`` per column (two products by ``apply``)."""
    y = torch.randn(x.shape, generator=torch.Generator(x.device).manual_seed(seed), dtype=x.dtype, device=x.device)
    scale = (_dot(x, x) / _dot(y, y).clamp_min(torch.finfo(torch.float64).tiny)).sqrt()
    y = y * scale.to(x.dtype).view(x.shape[:2] + (1,) * (x.dim() - 2))
    defect = ax + apply(y) - apply(x + y)
    return _dot(defect, defect).sqrt() / 3 ** 0.5


def reached(res: CGResult) -> torch.Tensor:
    """``[T, B]`` bool: the columns that reached rtol or stopped within ``FLOOR_MARGIN`` of their measured
    rounding floor (as accurate as the dtype allows: what an inner solve may accept)."""
    if res.floor is None:
        return res.converged
    return res.converged | within_floor(res.resid, res.floor)


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, rtol: float,
                       max_iter: int, replace_every: int = REPLACE_EVERY,
                       precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       report: Callable[[int, float], None] | None = None) -> CGResult:
    """Solve ``A_t x = b[t, c]`` for a batch of operators ``A_t`` (``matvec: [T, B, *s] -> [T, B, *s]``),
    each column converging on its own to ``||b - A x|| <= rtol ||b||`` (true residual).

    With ``T == 1`` the products run on the active columns only (``matvec`` must then accept any
    number of columns). ``precond`` applies an SPD approximation of ``A^{-1}`` (preconditioned CG).
    ``report(products, residual)`` is called after every iteration with the largest relative
    (recursive) residual of the active columns, and at the end with the largest true one.
    Raises :class:`NotPositiveDefinite` on non-positive curvature ``p.Ap``. Reductions are
    float64; ``resid`` is float64. ``x`` is the iterate of smallest true residual. ``floor`` is the
    relative rounding floor of every column that missed its target at a check without progress or at
    the end (NaN for the others).
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
    b_norm = rs.sqrt().clamp_min(torch.finfo(torch.float64).tiny)  # b = 0 has x = 0 and rs = 0
    target = rtol * rs.sqrt()
    active = rs > 0
    # the iterate of smallest true residual: past the floor, rounding can carry x away from it
    x_best, rs_best = x, rs.clone()
    noise = torch.full_like(rs, float("nan"))
    stalls = torch.zeros_like(rs, dtype=torch.int64)
    # after a false claim the recursive residual restarts from the true one and claims again within
    # an iteration or two, before CG can have made progress: the next claim is checked a window later
    quiet_until = torch.zeros_like(stalls)

    def measure_noise(columns: torch.Tensor, ax: torch.Tensor) -> torch.Tensor:
        """``noise`` with the columns that lack it measured at the current ``x``."""
        need = columns & noise.isnan()
        if not bool(need.any()):
            return noise
        return torch.where(need, rounding_noise(lambda v: apply(v, need.any(0)), x, ax), noise)

    def check(columns: torch.Tensor, claims: torch.Tensor, last: bool = False) -> tuple[torch.Tensor, ...]:
        """The true residual of ``columns`` (``[T, B, *s]``), its squared norm and the columns that
        missed the target without progress on their best, with ``x_best`` updated; false ``claims``
        without progress count as stalls. The noise is measured where a check made no progress
        (``last``: wherever the target is missed)."""
        nonlocal x_best, rs_best, stalls, noise
        true_r = b - apply(x, columns.any(0))
        rs_true = _dot(true_r, true_r)
        missed = columns & (rs_true.sqrt() > target)
        better = columns & (rs_true < rs_best)
        progress = columns & (rs_true < STALL_PROGRESS * rs_best)
        x_best = torch.where(better.view(shape), x, x_best)
        rs_best = torch.where(better, rs_true, rs_best)
        stalls = torch.where(progress, 0, stalls) + (claims & missed & ~progress).long()
        noise = measure_noise(missed & (~progress | last), b - true_r)
        return true_r, rs_true, missed & ~progress

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
        claims = active & (rs_new.sqrt() <= target) & (quiet_until <= k)
        stop = claims
        checked = claims | (active if (k + 1) % replace_every == 0 else torch.zeros_like(active))
        if bool(checked.any()):  # replace the recursive residual by the true one
            true_r, rs_true, stuck = check(checked, claims)
            r = torch.where(checked.view(shape), true_r, r)
            rs_new = torch.where(checked, rs_true, rs_new)
            z = prec(r)
            rz_new = torch.where(checked, _dot(r, z), rz_new)
            quiet_until = torch.where(claims & (rs_true.sqrt() > target), k + CLAIM_WINDOW, quiet_until)
            at_floor = stuck & within_floor(rs_best.sqrt(), noise)
            stop = (claims & (rs_true.sqrt() <= target)) | (stalls > STALLS) | at_floor
        going = active & ~stop
        if report is not None:
            report(k + 1, float((rs_new.sqrt() / b_norm).where(active, 0.0).max()))
        p = torch.where(going.view(shape), z + scaled(torch.where(going, beta, 0.0)) * p, p)
        rs, rz = torch.where(active, rs_new, rs), torch.where(active, rz_new, rz)
        active = going
    if bool(active.any()):  # stopped by max_iter: the true residual of the last iterate decides
        check(active, torch.zeros_like(active), last=True)
    residual = rs_best.sqrt() / b_norm
    if report is not None:
        report(int(iterations.max()) if iterations.numel() else 0, float(residual.max()) if residual.numel() else 0.0)
    return CGResult(x_best, iterations, residual, residual <= rtol, noise / b_norm)


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
        with stage(total=self.config.max_iter, desc="cg", disable=None, cap=True) as bar:
            def report(products: int, residual: float) -> None:
                bar.update(products - bar.n)
                bar.set_postfix(residual=f"{residual:.2e}")

            res = conjugate_gradient(lambda v: self.matvec(v[0])[None], b[None], self.config.rtol,
                                     self.config.max_iter, precond=precond, report=report)
        info = {} if self.precond is None else {"precondition_rank": self.precond.rank,
                                                "precondition_products": self.precond.products}
        return SolveResult(res.x[0], self.name, self.damping, bool(res.converged.all()), res.resid[0], res.iters[0],
                           info, res.floor[0])


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
