"""The solver configuration shared by every registered solver, and the names it may take."""

from __future__ import annotations

from typing import Any

from ..utils.config import check, check_choice, config, finite, setting

__all__ = ["SOLVERS", "SolverConfig"]

#: name -> solver class, filled by :func:`~metaif.linalg.register_solver`; read when a config is
#: checked or the command line is built, so a solver registered after import is a valid method
SOLVERS: dict[str, Any] = {}

FAILURE_POLICIES = ("floor", "raise", "warn")


@config
class SolverConfig:
    """How to apply ``(A + damping I)^{-1}`` for an operator ``A`` given only by products."""

    method: str = setting("cg", "solver (a name registered in metaif.linalg.SOLVERS)", choices=lambda: tuple(SOLVERS))
    damping: float = setting(0.0, "damping mu >= 0 added to the operator")
    rtol: float = setting(1e-6, "relative true residual ||b - A x|| / ||b|| an iterative solve must reach")
    max_iter: int = setting(200, "operator products per column (cg, minres, neumann)")
    rank: int = setting(40, "Lanczos steps of the lowrank solver")
    precondition: int = setting(0, "cg: rank of a spectral preconditioner (that many Lanczos products up front, "
                                   "reused by every solve of the operator; 0: none)")
    floor: float | None = setting(None, "lowrank: eigenvalue given to the complement of the Ritz "
                                        "vectors' span before damping (None: the complement is dropped)")
    lissa_tasks: int = setting(0, "neumann: tasks per minibatch product (LiSSA); 0 uses all tasks")
    seed: int = setting(0, "seed of random starts (power iteration, Lanczos) and LiSSA's minibatches")
    retries: int = setting(0, "times the damping is multiplied by retry_factor and the solve redone when "
                              "the damped operator is not positive definite or the series diverges")
    retry_factor: float = setting(10.0, "factor on the damping at each retry")
    on_failure: str = setting("floor", "when an iterative solve misses rtol: 'floor' warns where every missed "
                                       "column stopped at the rounding floor of the operator's dtype (measured by cg; "
                                       "rtol is then out of reach, the answer as accurate as the dtype allows) and "
                                       "raises otherwise; 'raise' always raises (a strict rtol); 'warn' always warns",
                              choices=FAILURE_POLICIES)

    def __post_init__(self) -> None:
        check_choice(self, "method", self.method, SOLVERS)
        check(finite(self.damping) and self.damping >= 0, self, "damping", "a finite number >= 0", self.damping)
        check(finite(self.rtol) and self.rtol > 0, self, "rtol", "a finite number > 0", self.rtol)
        for name in ("max_iter", "rank"):
            value = getattr(self, name)
            check(isinstance(value, int) and value >= 1, self, name, "an integer >= 1", value)
        check(self.floor is None or finite(self.floor) and self.floor > 0, self, "floor", "None or > 0", self.floor)
        check(isinstance(self.precondition, int) and self.precondition >= 0, self, "precondition", "an integer >= 0",
              self.precondition)
        check(isinstance(self.lissa_tasks, int) and self.lissa_tasks >= 0, self, "lissa_tasks", "an integer >= 0",
              self.lissa_tasks)
        check(isinstance(self.retries, int) and self.retries >= 0, self, "retries", "an integer >= 0", self.retries)
        check(finite(self.retry_factor) and self.retry_factor > 1, self, "retry_factor", "a number > 1",
              self.retry_factor)
        check_choice(self, "on_failure", self.on_failure, FAILURE_POLICIES)
