"""What every influence computer shares: the problem bound at lambda* on the analysed tasks with
their weights and configuration, and the spreading of per-item requests over the ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.tasks import TaskSet
from ..meta.batch import TaskBatch, Weights
from ..meta.binding import Binding, Bound, task_chunks
from ..parallel import World
from .config import InfluenceConfig
from .requests import instance_pairs, task_positions, variant_name

__all__ = ["Session"]


class Session:
    """``problem`` bound at ``lam [p]`` on ``tasks`` with ``weights`` (default uniform): the
    :class:`~metaif.meta.binding.Bound` (``bound``) and its :class:`~metaif.meta.binding.Binding`
    (``binding``), the task weights ``c [m]``, and which chunks of tasks carry weight."""

    def __init__(self, problem, lam: torch.Tensor, tasks: TaskSet, weights: Weights | None,
                 config: InfluenceConfig, world: World | None) -> None:
        if lam.dim() != 1:
            raise ValueError(f"lam must be a flat parameter vector [p], got shape {tuple(lam.shape)}")
        if not bool(torch.isfinite(lam).all()):
            raise ValueError("lam contains NaN or inf")
        self.problem, self.lam, self.tasks, self.config = problem, lam.detach(), tasks, config
        self.world = World.current() if world is None else world
        self.weights = weights.to(lam) if weights is not None else Weights.uniform(tasks, lam.dtype, lam.device)
        self.c = self.weights.c
        self.bound = self.bind(self.lam, self.weights)
        self.binding: Binding = self.bound.binding
        self.host_c = self.c.cpu()
        self.live = self.bound.live_chunks(self.host_c)

    def bind(self, lam: torch.Tensor, weights: Weights, theta0: torch.Tensor | None = None,
             tasks: TaskSet | None = None) -> Bound:
        """The problem bound at ``lam`` on ``tasks`` (default: the analysed ones) with ``weights``,
        inner problems warm-started from ``theta0 [m, q]``."""
        tasks = self.tasks if tasks is None else tasks
        cfg = self.config
        batch = TaskBatch.from_taskset(tasks, dtype=lam.dtype, w_tr=weights.w_tr, w_val=weights.w_val,
                                       device=lam.device)
        return Bound(self.problem, lam, batch, path=cfg.path, chunk=cfg.chunk, image_chunk=cfg.image_chunk,
                     memory=None if cfg.memory_gb is None else cfg.memory_gb * 2 ** 30,
                     inner=cfg.inner, inner_damping=cfg.inner_damping, passes=cfg.body_passes, theta0=theta0,
                     progress=self.shows_progress, world=self.world)

    @property
    def shows_progress(self) -> bool:
        """Whether long steps report progress (the config asks, and this rank writes)."""
        return self.config.progress and self.world.writer

    def variant(self, variant: str | None, allow_direct: bool = False) -> str:
        """``variant`` (default: the config's), checked."""
        return variant_name(variant or self.config.variant, allow_direct)

    def positions(self, positions, name: str = "positions") -> torch.Tensor:
        """Task positions ``[k]`` on lambda's device (all tasks when None), range-checked."""
        return task_positions(positions, len(self.tasks), name, self.lam.device)

    def pairs(self, items, split: str) -> torch.Tensor:
        """``(task position, index)`` pairs of the ``split`` ("val" or "train") instances, ``[k, 2]``."""
        width = (self.tasks.y_val if split == "val" else self.tasks.y_train).shape[1]
        return instance_pairs(items, f"{split} items", len(self.tasks), width, self.lam.device)

    def by_owner(self, positions: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor],
                 row_shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Rows ``[k, *row_shape]`` (default ``[k, p]``) for requests about the tasks at ``positions
        [k]``: the requests are grouped by the chunk of tasks they fall in and computed ``chunk`` at a
        time within a group (``compute(select)``, ``select`` their indices into the request), by the
        rank that holds the chunk; every rank gets all of them in request order. The groups do not
        depend on the number of ranks, so neither do the rows' bits."""
        row_shape = (self.lam.numel(),) if row_shape is None else row_shape
        block = self.bound.chunk
        host = positions.cpu()
        groups = host // block
        order = torch.argsort(groups, stable=True)  # by chunk, and so by rank: ranks hold whole chunks
        owner = self.world.owner(host, len(self.tasks), block)
        mine = order[owner[order] == self.world.rank]
        parts = []
        for group in torch.unique_consecutive(groups[mine]):
            members = mine[groups[mine] == group].to(positions.device)
            parts.extend(compute(members[idx]) for idx in task_chunks(len(members), block, positions.device))
        gathered = self.world.gather_parts(parts, self.lam, row_shape)
        out = torch.empty_like(gathered)
        out[order.to(out.device)] = gathered
        return out

    def own(self, positions: torch.Tensor) -> torch.Tensor:
        """The ``positions`` in this rank's span of the tasks."""
        first, last = self.world.span(len(self.tasks), block=self.bound.chunk)
        return positions[(positions >= first) & (positions < last)]
