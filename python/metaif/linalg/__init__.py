"""Solvers on linear operators: one operator protocol, every solver a small registered class.

``solve(op, b, SolverConfig(method=...))`` applies ``(A + damping I)^{-1}`` to a block of
right-hand sides with the config's retry and failure policies; :data:`SOLVERS` lists the
registered methods (cg, minres, neumann/LiSSA, dense, lowrank). :func:`conjugate_gradient` is
the batched CG the inner solves use (a :class:`~metaif.ops.CGResult` with the true residual);
:func:`woodbury_solve` the exact few-shot factor inverse.
"""

from . import cg, dense, lowrank, minres, neumann  # noqa: F401  (register the solvers)
from .cg import conjugate_gradient, reached
from .config import SolverConfig
from .dense import dense_matrix
from .operator import LinearOperator, MatvecOperator, dense_operator
from .power import power_iteration
from .registry import SOLVERS, DampingRetry, Solver, register_solver, solve
from .result import Diverged, MetaifWarning, NotConverged, NotPositiveDefinite, SolverError, SolveResult
from .woodbury import WoodburyInverse, as_damping, woodbury_solve

__all__ = ["SOLVERS", "DampingRetry", "Diverged", "LinearOperator", "MatvecOperator",
           "MetaifWarning", "NotConverged", "NotPositiveDefinite", "SolveResult", "Solver", "SolverConfig",
           "SolverError", "as_damping", "conjugate_gradient", "dense_matrix", "dense_operator", "power_iteration",
           "reached", "register_solver", "solve", "WoodburyInverse", "woodbury_solve"]
