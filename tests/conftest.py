"""Shared fixtures: random well-conditioned problems for the kernels and their references."""

from __future__ import annotations

import pytest
import torch

import metaif  # noqa: F401  (loads torch.ops.metaif)

TOLERANCES = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tol(dtype: torch.dtype) -> dict[str, float]:
    """Comparison tolerances: tight in float64, loose in float32."""
    return TOLERANCES[dtype]


def orthogonal(d: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))[0].to(dtype)


def spd(tasks: int, q: int, dtype: torch.dtype, floor: float = 0.5) -> torch.Tensor:
    """``[T, q, q]`` symmetric positive definite with eigenvalues >= floor."""
    m = torch.randn(tasks, q, q, dtype=torch.float64) / q**0.5
    return (m @ m.mT + floor * torch.eye(q, dtype=torch.float64)).to(dtype)


def ce_head_problem(tasks: int, n: int, d: int, classes: int, dtype: torch.dtype, weighted: bool = True):
    """feats [T, n, d], probs [T, n, C] on the simplex, weights [T, n] (or None)."""
    feats = torch.randn(tasks, n, d, dtype=dtype)
    probs = torch.softmax(torch.randn(tasks, n, classes, dtype=torch.float64), -1).to(dtype)
    weights = torch.rand(tasks, n, dtype=dtype) / max(n, 1) if weighted else None
    return feats, probs, weights


def noncontiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a strided (every other element) layout."""
    if t.dim() == 0:
        return t
    storage = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    storage[..., ::2] = t
    return storage[..., ::2]
