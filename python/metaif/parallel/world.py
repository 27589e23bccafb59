"""The process group a run is sharded over, and the few collectives the library needs.

A single process is a group of one, in which every collective is the identity, so that the same
code runs with and without torch.distributed. Work is split in contiguous spans (tasks, unique
images) whose sizes differ by at most one; every sum over them is a per-rank partial sum and one
all-reduce, and every rank then holds the same result (the solvers run in lock-step on replicated
vectors).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World"]


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

    def span(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """``[start, end)`` of ``rank``'s (default: this rank's) contiguous share of ``n`` items."""
        rank = self.rank if rank is None else rank
        base, extra = divmod(n, self.size)
        start = rank * base + min(rank, extra)
        return start, start + base + (1 if rank < extra else 0)

    def owner(self, index: torch.Tensor, n: int) -> torch.Tensor:
        """The rank whose span of ``n`` items holds each ``index``, same shape."""
        starts = torch.tensor([self.span(n, r)[0] for r in range(self.size)], device=index.device)
        return torch.searchsorted(starts, index, right=True) - 1

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks, in place; returns ``t``."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's rows ``local [k_r, ...]`` concatenated in rank order, on every rank."""
        if not self.distributed:
            return local
        counts = torch.zeros(self.size, dtype=torch.int64)
        counts[self.rank] = len(local)
        dist.all_reduce(counts)
        width = int(counts.max())
        padded = local.new_zeros(width, *local.shape[1:])
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[: int(c)] for part, c in zip(parts, counts)])

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
