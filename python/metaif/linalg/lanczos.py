"""Lanczos with full re-orthogonalisation: Ritz pairs of a symmetric operator (the extremes of its
spectrum first), for the low-rank solver and the spectral preconditioner of CG."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["lanczos"]


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], size: int, like: torch.Tensor, steps: int,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values ``[k]`` (float64, ascending) and orthonormal Ritz vectors ``[size, k]`` after at
    most ``steps`` products of ``matvec`` (``[1, size] -> [1, size]``) from a seeded random start;
    fewer when the Krylov space closes."""
    q = torch.randn(size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64, device="cpu")
    q = q.to(dtype=like.dtype, device=like.device)
    basis, alphas, betas = [q / q.norm()], [], []
    for j in range(min(steps, size)):
        w = matvec(basis[j][None])[0]
        alphas.append(float(basis[j] @ w))
        stacked = torch.stack(basis)
        w = w - stacked.mT @ (stacked @ w)   # full re-orthogonalisation, twice for stability
        w = w - stacked.mT @ (stacked @ w)
        beta = float(w.norm())
        if j + 1 == min(steps, size) or beta <= 1e-10 * abs(alphas[0]):
            break
        betas.append(beta)
        basis.append(w / beta)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64, device="cpu"))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64, device="cpu")
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    values, vecs = torch.linalg.eigh(t)
    return values, torch.stack(basis).mT @ vecs.to(dtype=like.dtype, device=like.device)
