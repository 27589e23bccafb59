"""The process group a run is sharded over, and the few collectives the library needs.

A single process is a group of one, in which every collective is the identity, so that the same
code runs with and without torch.distributed. Work is cut into blocks fixed by the data (chunks of
tasks, of unique images), and each rank takes a contiguous span of whole blocks; every sum over
them is an :class:`~.exact.ExactSum` of the blocks' partial sums, whose value does not depend on
how the blocks were shared, so one process and any number of ranks get the same bits (the solvers
run in lock-step on replicated vectors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .exact import ExactSum

__all__ = ["World"]

_MAX_DIMS = 6  # of a tensor gathered by rows


@dataclass(frozen=True)
class World:
    """``rank`` of ``size`` processes (the default group of torch.distributed when it has one)."""

    rank: int = 0
    size: int = 1

    @staticmethod
    def current() -> World:
        """The initialised default group, or a group of one."""
        if dist.is_available() and dist.is_initialized():
            return World(dist.get_rank(), dist.get_world_size())
        return World()

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Whether this rank writes the run's files (rank 0)."""
        return self.rank == 0

    def span(self, n: int, rank: int | None = None, block: int = 1) -> tuple[int, int]:
        """``[start, end)`` of ``rank``'s (default: this rank's) contiguous share of ``n`` items: whole
        blocks of ``block`` items (the last block may be shorter), the ranks' counts of blocks
        differing by at most one; a rank may get none (``start == end``)."""
        if block < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        rank = self.rank if rank is None else rank
        base, extra = divmod(-(-n // block), self.size)
        first = rank * base + min(rank, extra)
        last = first + base + (1 if rank < extra else 0)
        return min(first * block, n), min(last * block, n)

    def owner(self, index: torch.Tensor, n: int, block: int = 1) -> torch.Tensor:
        """The rank whose span (:meth:`span` with ``block``) of ``n`` items holds each ``index``, same shape."""
        starts = torch.tensor([self.span(n, r, block)[0] for r in range(self.size)], device=index.device)
        return torch.searchsorted(starts, index.contiguous(), right=True) - 1

    def total(self, acc: ExactSum) -> torch.Tensor:
        """The value of ``acc`` summed over the ranks: the same bits whatever the number of ranks and
        whichever rank added what. Every rank must call it; ``acc`` then holds the total."""
        if self.distributed:
            top = acc.top.clone()
            dist.all_reduce(top, op=dist.ReduceOp.MAX)
            acc.align(top)
            dist.all_reduce(acc.limbs, op=dist.ReduceOp.SUM)
            if self.max(float(acc.has_special)):  # non-finite addends somewhere: rare, so sent only then
                dist.all_reduce(acc.special(), op=dist.ReduceOp.SUM)
        return acc.value()

    def sum_blocks(self, parts, like: torch.Tensor) -> torch.Tensor:
        """The exact sum over the ranks of this rank's block partial sums ``parts`` (an iterable of
        tensors shaped like ``like``)."""
        acc = ExactSum(like)
        for part in parts:
            acc.add(part)
        return self.total(acc)

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's rows ``local [k_r, ...]`` concatenated in rank order, on every rank. A rank
        without rows may pass any empty tensor of the right dtype (its shape is taken from the others)."""
        if not self.distributed:
            return local
        if local.dim() > _MAX_DIMS:
            raise ValueError(f"gather_rows takes tensors of at most {_MAX_DIMS} dimensions, got {local.dim()}")
        shapes = torch.zeros(self.size, 1 + _MAX_DIMS, dtype=torch.int64)
        shapes[self.rank, 0] = len(local) if local.numel() else 0
        if local.numel():
            shapes[self.rank, 1] = local.dim()
            shapes[self.rank, 2:2 + local.dim() - 1] = torch.tensor(local.shape[1:], dtype=torch.int64)
        dist.all_reduce(shapes)
        counts, with_rows = shapes[:, 0], torch.nonzero(shapes[:, 0]).flatten()
        if not len(with_rows):
            return local
        model = shapes[int(with_rows[0])]
        trailing = [int(d) for d in model[2:2 + int(model[1]) - 1]]
        padded = local.new_zeros(int(counts.max()), *trailing)
        if local.numel():
            padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[: int(c)] for part, c in zip(parts, counts)])

    def gather_parts(self, parts: list[torch.Tensor], like: torch.Tensor, row_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """:meth:`gather_rows` of this rank's ``parts`` concatenated (none: ``[0, *row_shape]`` of
        ``like``'s dtype and device)."""
        return self.gather_rows(torch.cat(parts) if parts else like.new_zeros(0, *row_shape))

    def disagreeing(self, value: str) -> list[int]:
        """The ranks whose ``value`` differs from rank 0's (the same list on every rank; empty when
        all agree)."""
        if not self.distributed:
            return []
        values: list[str | None] = [None] * self.size
        dist.all_gather_object(values, value)
        return [rank for rank, v in enumerate(values) if v != values[0]]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()
