"""The solver registry and the policy around every solve.

A solver is a small :class:`Solver` subclass registered by name with :func:`register_solver`;
adding one needs no edit elsewhere. :class:`DampingRetry` wraps the configured solver with the
policy of :class:`~metaif.linalg.SolverConfig`: raise the damping and retry when the damped
operator is not positive definite (or a series diverges), and raise or warn when an iterative
solve misses its tolerance.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import replace
from typing import ClassVar

import torch

from .config import SOLVERS, SolverConfig
from .operator import LinearOperator
from .result import Diverged, MetaifWarning, NotConverged, NotPositiveDefinite, SolveResult

__all__ = ["SOLVERS", "DampingRetry", "Solver", "register_solver", "solve"]


class Solver(ABC):
    """Prepares ``(A + damping I)^{-1}`` for ``op`` on construction; :meth:`solve` applies it to
    ``b [k, size]``. Raises :class:`NotPositiveDefinite` where the damped operator is not."""

    name: ClassVar[str]

    def __init__(self, op: LinearOperator, config: SolverConfig) -> None:
        self.op, self.config, self.damping = op, config, config.damping

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``(A + damping I) v`` for ``v [k, size]``."""
        out = self.op.matvec(v)
        return out + self.damping * v if self.damping else out

    @abstractmethod
    def solve(self, b: torch.Tensor) -> SolveResult: ...


def register_solver(cls: type[Solver]) -> type[Solver]:
    """Class decorator: make ``cls`` available as ``SolverConfig(method=cls.name)``."""
    SOLVERS[cls.name] = cls
    return cls


def check_rhs(op: LinearOperator, b: torch.Tensor) -> None:
    if b.dim() != 2 or b.shape[1] != op.size:
        raise ValueError(f"right-hand sides must be [k, {op.size}], got {tuple(b.shape)}")
    if b.dtype != op.dtype or b.device != op.device:
        raise ValueError(f"right-hand sides are {b.dtype} on {b.device}, the operator {op.dtype} on {op.device}")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("right-hand sides contain NaN or inf")


def relative_residual(matvec, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``||b - A x|| / ||b||`` per row, float64 (0 where ``b`` is 0)."""
    r = (b - matvec(x)).double().norm(dim=-1)
    norm = b.double().norm(dim=-1)
    return torch.where(norm > 0, r / norm.clamp_min(torch.finfo(torch.float64).tiny), r)


class DampingRetry:
    """The solver ``config.method`` for ``op`` with the config's retry and failure policies.

    ``damping`` is the damping in use (it only grows). Every retry warns once, in one line.
    """

    def __init__(self, op: LinearOperator, config: SolverConfig) -> None:
        self.op, self.config = op, config
        self.retries_left = config.retries
        self.solver = self._attempt()

    @property
    def damping(self) -> float:
        return self.solver.damping

    def _raise_damping(self, err: Exception) -> bool:
        if self.retries_left == 0:
            return False
        self.retries_left -= 1
        old = self.config.damping
        new = old * self.config.retry_factor if old > 0 else 1e-3
        self.config = replace(self.config, damping=new)
        warnings.warn(f"{err} Retrying with damping {new:g} (was {old:g}).", MetaifWarning, stacklevel=4)
        return True

    def _attempt(self) -> Solver:
        """The solver for the current config, raising the damping while its preparation fails."""
        while True:
            try:
                return SOLVERS[self.config.method](self.op, self.config)
            except (NotPositiveDefinite, Diverged) as err:
                if not self._raise_damping(err):
                    raise

    def solve(self, b: torch.Tensor) -> SolveResult:
        check_rhs(self.op, b)
        while True:
            try:
                result = self.solver.solve(b)
                break
            except (NotPositiveDefinite, Diverged) as err:
                if not self._raise_damping(err):
                    raise
                self.solver = self._attempt()
        if not result.converged:
            at_floor = result.at_floor(self.config.rtol)
            message = (f"{result.method} stopped at relative residual {float(result.residual.max()):.2e} > rtol "
                       f"{self.config.rtol:g} after {int(result.iterations.max())} products; "
                       f"{self._floor_note(result) if at_floor else self._advice(result)}")
            if self.config.on_failure == "raise" or (self.config.on_failure == "floor" and not at_floor):
                raise NotConverged(message)
            warnings.warn(message, MetaifWarning, stacklevel=2)
        return result

    def _floor_note(self, result: SolveResult) -> str:
        """Why a solve at the rounding floor is accepted, and what would go further."""
        floor = float(result.floor[result.missed(self.config.rtol)].max())
        return (f"that is the rounding floor of {str(self.op.dtype).removeprefix('torch.')} products with this "
                f"operator (measured {floor:.1e}), so rtol is out of reach and the answer is as accurate as this "
                f"dtype allows; solve in float64 (e.g. an analyzer at lam.double()) or raise the damping for a "
                f"smaller residual, or set on_failure='raise' (--on-failure raise) to make this an error")

    def _advice(self, result: SolveResult) -> str:
        """What may help a solve that missed rtol: more products only where a failed column used them all."""
        if result.iterations is None or result.residual is None:
            return "raise damping, or use another solver"
        failed = result.residual > self.config.rtol
        if bool((result.iterations[failed] >= self.config.max_iter).any()):
            return "raise max_iter or damping, or use another solver"
        return ("it stopped before max_iter (its residual estimate reached rtol, or the residual stagnated at the "
                "rounding floor of the operator's dtype), so more products would not help: raise damping or rtol, or "
                "solve in float64")


def solve(op: LinearOperator, b: torch.Tensor, config: SolverConfig) -> SolveResult:
    """``(A + damping I)^{-1} b`` for ``b [k, size]`` by ``config`` (retry and failure policies included)."""
    return DampingRetry(op, config).solve(b)
