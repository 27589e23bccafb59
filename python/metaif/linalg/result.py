"""What a solve returns, and how it fails."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Diverged", "MetaifWarning", "NotConverged", "NotPositiveDefinite", "SolveResult", "SolverError"]


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
    retry policy may have raised it); ``info`` holds method-specific details."""

    x: torch.Tensor
    method: str
    damping: float
    converged: bool = True
    residual: torch.Tensor | None = None
    iterations: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready description (no solution)."""
        out = {"method": self.method, "damping": self.damping, "converged": self.converged, **self.info}
        if self.residual is not None:
            out["residual_max"] = float(self.residual.max()) if self.residual.numel() else 0.0
        if self.iterations is not None:
            out["iterations_max"] = int(self.iterations.max()) if self.iterations.numel() else 0
        return out
