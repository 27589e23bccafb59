"""The one operator protocol every solver takes: a symmetric linear map on ``R^size`` applied to
a block of vectors ``[k, size] -> [k, size]``.

Any object with ``size``, ``dtype``, ``device`` and ``matvec`` qualifies; :class:`MatvecOperator`
makes one from a function, and may carry ``sampled`` (an unbiased minibatch estimate of the
product, which LiSSA uses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["LinearOperator", "MatvecOperator", "dense_operator"]

Block = Callable[[torch.Tensor], torch.Tensor]
Sampled = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@runtime_checkable
class LinearOperator(Protocol):
    """A symmetric linear map on ``R^size``; ``matvec`` maps ``[k, size]`` to ``[k, size]``."""

    @property
    def size(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class MatvecOperator:
    """An operator from ``fn: [k, size] -> [k, size]``; ``sampled(v, generator)`` is an optional
    unbiased estimate of ``fn(v)`` from a random minibatch (LiSSA)."""

    fn: Block
    size: int
    dtype: torch.dtype
    device: torch.device
    sampled: Sampled | None = None

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.fn(v)

    @classmethod
    def per_vector(cls, fn: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor,
                   sampled: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> MatvecOperator:
        """From a product of one vector ``[size] -> [size]`` (applied row by row); ``like`` fixes
        size, dtype and device."""
        def block(v: torch.Tensor) -> torch.Tensor:
            return torch.stack([fn(row) for row in v]) if len(v) else v.clone()

        def block_sampled(v: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
            return torch.stack([sampled(row, gen) for row in v])

        return cls(block, like.numel(), like.dtype, like.device, block_sampled if sampled else None)


def dense_operator(matrix: torch.Tensor) -> MatvecOperator:
    """The operator of a symmetric matrix ``[p, p]``."""
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"dense_operator: matrix must be square [p, p], got {tuple(matrix.shape)}")
    return MatvecOperator(lambda v: v @ matrix.mT, matrix.shape[0], matrix.dtype, matrix.device)
