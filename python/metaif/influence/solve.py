"""Solves with the total Hessian (math.md §13): ``(A + mu I)^{-1} b`` for an SPD ``A`` given only as a
matrix-vector product, for several right-hand sides ``b [k, p]``.

* ``cg``: conjugate gradient per column (default); raises on non-positive curvature.
* ``neumann``: the scaled Neumann series with a power-iteration scale and a divergence check;
  with ``lissa_tasks > 0`` each term uses a random minibatch of tasks (LiSSA).
* ``dense``: forms A by p products and factors it (exact; small p only).
* ``lowrank``: Lanczos with full re-orthogonalisation gives ``rank`` Ritz pairs (the extremes of
  the spectrum first); the complement of their span is either dropped (``floor=None``, a
  projection) or treated as one eigenvalue ``floor`` (e.g. the outer weight gamma, the identity
  part of the total Hessian); one factorisation then serves every right-hand side.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .. import reference

METHODS = ("cg", "neumann", "dense", "lowrank")
Matvec = Callable[[torch.Tensor], torch.Tensor]


class SolverError(RuntimeError):
    """The total Hessian is not positive definite (at this damping) or a series diverged."""


@dataclass(frozen=True)
class SolverConfig:
    """``damping`` mu >= 0 added to A; ``rtol`` relative residual (cg) / increment (neumann);
    ``max_iter`` iterations (cg, neumann); ``rank`` Lanczos steps; ``floor`` complement
    eigenvalue for ``lowrank`` before damping (None: drop the complement); ``lissa_tasks`` tasks per Neumann term
    (0: all); ``seed`` for Lanczos' start and LiSSA's minibatches."""

    method: str = "cg"
    damping: float = 0.0
    rtol: float = 1e-6
    max_iter: int = 200
    rank: int = 40
    floor: float | None = None
    lissa_tasks: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"SolverConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.damping < 0 or not self.rtol > 0 or self.max_iter < 1 or self.rank < 1:
            raise ValueError(f"SolverConfig needs damping >= 0, rtol > 0, max_iter >= 1, rank >= 1; got {self}")


class HessianSolver:
    """``(A + mu I)^{-1}`` for ``A`` given by ``matvec(v [p]) -> [p]``; call it on ``b [k, p]``.

    ``sampled(v, generator)`` is the minibatch product LiSSA needs (an unbiased estimate of A v).
    """

    def __init__(self, matvec: Matvec, p: int, like: torch.Tensor, config: SolverConfig,
                 sampled: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> None:
        self.config, self.p, self.like = config, p, like
        mu = config.damping
        self.matvec = (lambda v: matvec(v) + mu * v) if mu else matvec
        self.sampled = sampled
        self.info: dict = {"method": config.method, "damping": mu}
        if config.method == "dense":
            self._prepare_dense()
        elif config.method == "lowrank":
            self._prepare_lowrank()

    def __call__(self, b: torch.Tensor) -> torch.Tensor:
        if b.dim() != 2 or b.shape[1] != self.p:
            raise ValueError(f"right-hand sides must be [k, {self.p}], got {tuple(b.shape)}")
        if not bool(torch.isfinite(b).all()):
            raise ValueError("right-hand sides contain NaN or inf")
        method = self.config.method
        if method == "dense":
            return torch.cholesky_solve(b.mT, self.chol).mT
        if method == "lowrank":
            coef = b @ self.vectors
            inside = (coef / self.values) @ self.vectors.mT
            if self.floor is None:
                return inside
            return inside + (b - coef @ self.vectors.mT) / self.floor
        if method == "cg":
            return self._cg(b)
        return torch.stack([self._neumann(col) for col in b])

    # ---- methods -------------------------------------------------------------------------------

    def _cg(self, b: torch.Tensor) -> torch.Tensor:
        def batched(x):  # [1, k, p]
            return torch.stack([self.matvec(col) for col in x[0]])[None]

        try:
            res = reference.cg(batched, b[None], self.config.rtol, self.config.max_iter)
        except RuntimeError as err:
            raise SolverError(f"{err}: the total Hessian is not positive definite here (lambda is not a "
                              f"local minimum, or the 'gn' variant); raise SolverConfig.damping") from None
        self.info.update(iterations=res.iters[0].tolist(), residual=res.resid[0].tolist())
        if bool((res.resid > 10 * self.config.rtol).any()):
            warnings.warn(f"cg stopped at relative residual {float(res.resid.max()):.2e} after "
                          f"{self.config.max_iter} iterations; raise max_iter or damping", stacklevel=3)
        return res.x[0]

    def _scale(self) -> float:
        x = torch.randn(self.p, generator=torch.Generator().manual_seed(self.config.seed), dtype=torch.float64)
        x = x.to(self.like)
        estimate = 0.0
        for _ in range(20):
            x = x / x.norm()
            y = self.matvec(x)
            estimate = float(x @ y)
            x = y
        if not estimate > 0:
            raise SolverError("neumann: the power iteration found a non-positive eigenvalue; raise damping")
        return 1.1 * estimate

    def _neumann(self, b: torch.Tensor) -> torch.Tensor:
        if "scale" not in self.info:  # setdefault would rerun the power iteration for every column
            self.info["scale"] = self._scale()
        scale = self.info["scale"]
        gen = torch.Generator().manual_seed(self.config.seed)
        r, smallest = b, math.inf
        noise = 1e3 * torch.finfo(b.dtype).eps
        for step in range(self.config.max_iter):
            product = self.matvec(r) if not self.config.lissa_tasks else self.sampled(r, gen) + self.config.damping * r
            new = b + r - product / scale
            increment, size = float((new - r).norm()), float(new.norm())
            r = new
            if increment <= self.config.rtol * size:
                break
            # For a symmetric A with spectrum in (0, 2 scale) the increments never grow.
            if not self.config.lissa_tasks and increment > 2 * smallest and increment > noise * size:
                raise SolverError(f"neumann diverged at term {step} (scale {scale:.3g}): the damped total "
                                  f"Hessian has eigenvalues outside (0, 2 scale); raise damping")
            smallest = min(smallest, increment)
        self.info["terms"] = step + 1
        return r / scale

    def _prepare_dense(self) -> None:
        eye = torch.eye(self.p, dtype=self.like.dtype, device=self.like.device)
        a = torch.stack([self.matvec(col) for col in eye])
        a = 0.5 * (a + a.mT)
        self.chol, bad = torch.linalg.cholesky_ex(a)
        if int(bad):
            raise SolverError(f"dense: the total Hessian is not positive definite (min eigenvalue "
                              f"{float(torch.linalg.eigvalsh(a)[0]):.3g}); raise SolverConfig.damping")

    def _prepare_lowrank(self) -> None:
        k = min(self.config.rank, self.p)
        gen = torch.Generator().manual_seed(self.config.seed)
        q = torch.randn(self.p, generator=gen, dtype=torch.float64).to(self.like)
        basis, alphas, betas = [q / q.norm()], [], []
        for j in range(k):
            w = self.matvec(basis[j])
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
            raise SolverError(f"lowrank: Ritz value {float(values[0]):.3g} <= 0; the total Hessian is not "
                              f"positive definite here; raise SolverConfig.damping")
        self.vectors = torch.stack(basis).mT @ vecs.to(self.like)
        self.values = values.to(self.like)
        self.floor = None if self.config.floor is None else self.config.floor + self.config.damping
        self.info.update(ritz_values=values.tolist(), floor=self.floor)
