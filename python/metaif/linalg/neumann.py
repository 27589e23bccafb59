"""The scaled Neumann series and LiSSA (math.md §13.2) for the total Hessian, with a divergence
contract.

``x_J = (1/s) sum_{j<=J} (I - A/s)^j b`` by ``r_0 = b``, ``r_j = b + r_{j-1} - A r_{j-1}/s``; the
increment ``e_j = r_j - r_{j-1} = (I - A/s)^j b`` is the residual of the previous iterate. For a
symmetric A with spectrum in ``(0, 2s)`` the increments never grow, so growth above rounding
proves divergence (an eigenvalue <= 0 or >= 2s) and raises :class:`Diverged`. The scale is 1.1
times the power-iteration estimate of the top eigenvalue. A column stops when its increment is
below ``rtol ||b||``; the returned residual is recomputed from ``x`` (LiSSA's increments are
noisy, so only the final check decides convergence there).

This is the generic-operator version (any ``matvec``, LiSSA's sampled products, columns that stop
on their own increment). The compiled ``neumann_dense`` / ``neumann_ce_head`` kernels run the same
recursion, scale and divergence test for a fixed number of terms, with the constants below named
as ``include/metaif/arith.h`` names them (a test reads the header and compares).
"""

from __future__ import annotations

import torch

from .power import power_iteration
from .registry import Solver, register_solver, relative_residual
from .result import Diverged, NotPositiveDefinite, SolveResult

__all__ = ["GROWTH_TOLERANCE", "NOISE_EPSILONS", "NeumannSolver", "POWER_ITERATIONS", "SCALE_SAFETY"]

POWER_ITERATIONS = 20     # arith::kPowerIterations: power steps of the top-eigenvalue estimate
SCALE_SAFETY = 1.1        # arith::kScaleSafety: the scale s over that estimate
GROWTH_TOLERANCE = 1e-6   # arith::kGrowthTolerance: relative growth of an increment that is divergence
NOISE_EPSILONS = 100.0    # arith::kNoiseEpsilons: the rounding level of an iterate, in eps times its norm


@register_solver
class NeumannSolver(Solver):
    """Scaled Neumann series; with ``lissa_tasks > 0`` each term uses the operator's ``sampled``
    minibatch product (LiSSA)."""

    name = "neumann"

    def __init__(self, op, config) -> None:
        super().__init__(op, config)
        self.lissa = config.lissa_tasks > 0
        if self.lissa and getattr(op, "sampled", None) is None:
            raise ValueError("SolverConfig.lissa_tasks > 0 needs an operator with a sampled (minibatch) product")
        estimate = power_iteration(self.matvec, op.size, torch.empty(0, dtype=op.dtype, device=op.device),
                                   POWER_ITERATIONS, seed=config.seed)
        if not estimate > 0 or estimate == float("inf"):
            raise NotPositiveDefinite(f"neumann: the power iteration's top eigenvalue estimate is {estimate:.3g}; "
                                      f"the damped operator is not positive definite (or is zero).")
        self.scale = SCALE_SAFETY * estimate

    def _product(self, r: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.lissa:
            return self.op.sampled(r, gen) + self.damping * r
        return self.matvec(r)

    def solve(self, b: torch.Tensor) -> SolveResult:
        gen = torch.Generator().manual_seed(self.config.seed)
        eps = torch.finfo(b.dtype).eps
        b_norm = b.double().norm(dim=1)
        r = b.clone()
        active = b_norm > 0
        smallest = torch.full_like(b_norm, float("inf"))
        iterations = torch.zeros(len(b), dtype=torch.int64, device=b.device)
        for step in range(self.config.max_iter):
            rows = torch.nonzero(active).flatten()
            if len(rows) == 0:
                break
            ra = r[rows]
            new = b[rows] + ra - self._product(ra, gen) / self.scale
            if not bool(torch.isfinite(new).all()):
                raise Diverged(f"neumann produced non-finite values at term {step}.")
            increment = (new - ra).double().norm(dim=1)
            if not self.lissa:
                noise = NOISE_EPSILONS * eps * new.double().norm(dim=1)
                grew = increment - smallest[rows] > GROWTH_TOLERANCE * smallest[rows] + noise
                if bool(grew.any()):
                    raise Diverged(f"neumann diverged at term {step} (scale {self.scale:.3g}): the damped operator has "
                                   f"eigenvalues outside (0, 2 scale).")
            r[rows] = new
            iterations[rows] += 1
            smallest[rows] = torch.minimum(smallest[rows], increment)
            active[rows[increment <= self.config.rtol * b_norm[rows]]] = False
        x = r / self.scale
        residual = relative_residual(self.matvec, b, x)
        return SolveResult(x, self.name, self.damping, bool((residual <= self.config.rtol).all()), residual,
                           iterations, {"scale": self.scale})
