"""What a solve returns, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["FLOOR_MARGIN", "Diverged", "MetaifWarning", "NotConverged", "NotPositiveDefinite", "SolveResult",
           "SolverError", "within_floor"]


#: a true residual within this factor of one product's measured rounding noise is at the floor
FLOOR_MARGIN = 10.0


def within_floor(residual: torch.Tensor, floor: torch.Tensor, margin: float = FLOOR_MARGIN) -> torch.Tensor:
    """Elementwise: a residual within ``margin`` of its measured rounding floor (False where none was measured)."""
    return ~floor.isnan() & (residual <= margin * floor)


class MetaifWarning(UserWarning):
    """A warning of metaif's (the CLI prints these as one line, without a source line)."""


class SolverError(RuntimeError):
    """A solve could not produce the answer it was asked for."""


class NotPositiveDefinite(SolverError):
    """The (damped) operator met non-positive curvature: more damping, or MINRES, may help."""


class Diverged(SolverError):
    """An iteration (Neumann / LiSSA) grew instead of converging."""


class NotConverged(SolverError):
    """An iterative solve stopped above the requested relative residual."""


@dataclass(frozen=True)
class SolveResult:
    """Solutions ``x [k, p]`` of ``(A + damping I) x = b``.

    ``residual [k]`` is the *true* relative residual ``||b - (A + damping I) x|| / ||b||``,
    recomputed from ``x`` (``None`` for direct methods, exact up to rounding); ``iterations
    [k]`` counts operator products per column (``None`` for direct methods); ``converged`` says
    whether every column reached the requested tolerance; ``damping`` is the damping used (the
    retry policy may have raised it); ``floor [k]`` (float64; CG only) is the relative rounding
    floor measured for the columns that missed it (NaN elsewhere): the smallest residual the
    operator's dtype can show at ``x``; ``info`` holds method-specific details."""

    x: torch.Tensor
    method: str
    damping: float
    converged: bool = True
    residual: torch.Tensor | None = None
    iterations: torch.Tensor | None = None
    info: dict = field(default_factory=dict)
    floor: torch.Tensor | None = None

    def missed(self, rtol: float) -> torch.Tensor:
        """``[k]`` bool: the columns above ``rtol``."""
        if self.residual is None:
            return torch.zeros(self.x.shape[0], dtype=torch.bool, device=self.x.device)
        return self.residual > rtol

    def at_floor(self, rtol: float, margin: float = FLOOR_MARGIN) -> bool:
        """Whether every column above ``rtol`` is within ``margin`` of its measured rounding floor
        (the answer is then as accurate as the dtype allows)."""
        missed = self.missed(rtol)
        if self.floor is None or not bool(missed.any()):
            return False
        return bool(within_floor(self.residual[missed], self.floor[missed], margin).all())

    def summary(self) -> dict:
        """JSON-ready description (no solution)."""
        out = {"method": self.method, "damping": self.damping, "converged": self.converged, **self.info}
        if self.residual is not None:
            out["residual_max"] = float(self.residual.max()) if self.residual.numel() else 0.0
        if self.iterations is not None:
            out["iterations_max"] = int(self.iterations.max()) if self.iterations.numel() else 0
        if self.floor is not None and not bool(self.floor.isnan().all()):
            out["floor_max"] = float(self.floor.nan_to_num(0.0).max())
        return out
