"""Tasks as the meta and influence layers see them: stacked per-task index tensors into inputs
stored once, with the per-example weights of math.md §1."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.pixels import PIXEL_CODE, decode_pixels
from ..data.tasks import TaskSet

__all__ = ["TaskBatch", "Weights"]


@dataclass
class Weights:
    """Per-task ``c [m]`` and per-instance ``w_tr [m, n]``, ``w_val [m, v]`` weights (math.md §1)."""

    c: torch.Tensor
    w_tr: torch.Tensor
    w_val: torch.Tensor

    @staticmethod
    def uniform(tasks: TaskSet, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Weights:
        m, n, v = len(tasks), tasks.y_train.shape[1], tasks.y_val.shape[1]
        full = lambda shape, value: torch.full(shape, value, dtype=dtype, device=device)  # noqa: E731
        return Weights(full((m,), 1.0 / m), full((m, n), 1.0 / n), full((m, v), 1.0 / v))

    def to(self, *args, **kwargs) -> Weights:
        """The weights moved as :meth:`torch.Tensor.to` moves a tensor (a dtype, a device, a like tensor)."""
        return Weights(self.c.to(*args, **kwargs), self.w_tr.to(*args, **kwargs), self.w_val.to(*args, **kwargs))

    def without(self, tasks: TaskSet, remove_tasks=(), remove_instances=()) -> Weights:
        """Zero the weights of removed task ids and of ``(task_id, "train"|"val", j)`` instances."""
        position = {int(t): i for i, t in enumerate(tasks.task_ids)}
        for _, split, _ in remove_instances:
            if split not in ("train", "val"):
                raise ValueError(f"instance split must be 'train' or 'val', got {split!r}")
        return self.without_positions(
            [position[int(t)] for t in remove_tasks],
            [(position[int(t)], j) for t, split, j in remove_instances if split == "val"],
            [(position[int(t)], j) for t, split, j in remove_instances if split == "train"])

    def without_positions(self, tasks=(), val=(), train=()) -> Weights:
        """Zero the weights of task positions and of ``(position, j)`` validation / training instances."""
        out = Weights(self.c.clone(), self.w_tr.clone(), self.w_val.clone())
        for k in tasks:
            out.c[int(k)] = 0.0
        for table, items in ((out.w_val, val), (out.w_tr, train)):
            for k, j in items:
                table[int(k), int(j)] = 0.0
        return out


@dataclass(frozen=True)
class TaskBatch:
    """B tasks over U inputs stored once: task b trains on ``inputs[pos_tr[b]]`` (``[n, ...]``) with
    targets ``y_tr[b]`` and weights ``w_tr[b]``, and is validated on ``inputs[pos_val[b]]``.

    Targets are integer labels or real values (``[B, n]`` or ``[B, n, K]``). Image inputs may be
    8-bit pixel codes (:mod:`metaif.data.pixels`), decoded where they are read.
    """

    inputs: torch.Tensor   # [U, ...] float, or uint8 pixel codes
    pos_tr: torch.Tensor   # [B, n] int64 rows of inputs
    y_tr: torch.Tensor
    w_tr: torch.Tensor     # [B, n]
    pos_val: torch.Tensor  # [B, v]
    y_val: torch.Tensor
    w_val: torch.Tensor    # [B, v]

    def __len__(self) -> int:
        return self.pos_tr.shape[0]

    @property
    def x_tr(self) -> torch.Tensor:
        """``[B, n, ...]`` (gathered: one copy per use; pixel codes decoded as the weights' dtype)."""
        return self._values(self.inputs[self.pos_tr])

    @property
    def x_val(self) -> torch.Tensor:
        """``[B, v, ...]``, as :attr:`x_tr`."""
        return self._values(self.inputs[self.pos_val])

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        return decode_pixels(x, self.w_tr.dtype) if x.dtype == PIXEL_CODE else x

    @staticmethod
    def from_taskset(tasks: TaskSet, rows: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                     w_tr: torch.Tensor | None = None, w_val: torch.Tensor | None = None,
                     device: torch.device | str | None = None) -> TaskBatch:
        """Tasks at positions ``rows`` (all when None) over the unique images they use, moved to
        ``device`` once (default: where the task set is), as ``dtype`` (pixel codes stay codes); weights
        default to :meth:`Weights.uniform`'s."""
        sub = tasks if rows is None else tasks.subset(rows)
        device = sub.images.device if device is None else torch.device(device)
        m, n = sub.train_index.shape
        used = torch.cat([sub.train_index.flatten(), sub.val_index.flatten()])
        unique, inverse = torch.unique(used, return_inverse=True)
        inverse = inverse.to(device)
        uniform = Weights.uniform(sub, dtype, device)
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        # every image used (the unique indices are then 0..U-1 in order): the task set's own tensor, not a
        # copy (0.8 GB of pixel codes at mini-ImageNet's 38,400 images)
        inputs = sub.images if len(unique) == len(sub.images) else sub.images[unique]
        inputs = inputs.to(device=device, dtype=None if inputs.dtype == PIXEL_CODE else dtype)
        return TaskBatch(inputs, inverse[: m * n].view(m, n),
                         sub.y_train.to(device), uniform.w_tr if w_tr is None else move(w_tr),
                         inverse[m * n:].view(sub.val_index.shape), sub.y_val.to(device),
                         uniform.w_val if w_val is None else move(w_val))

    def select(self, rows: torch.Tensor) -> TaskBatch:
        """The tasks at ``rows`` (positions), over the same inputs."""
        return TaskBatch(self.inputs, self.pos_tr[rows], self.y_tr[rows], self.w_tr[rows], self.pos_val[rows],
                         self.y_val[rows], self.w_val[rows])

    def with_weights(self, w_tr: torch.Tensor | None = None, w_val: torch.Tensor | None = None) -> TaskBatch:
        return TaskBatch(self.inputs, self.pos_tr, self.y_tr, self.w_tr if w_tr is None else w_tr, self.pos_val,
                         self.y_val, self.w_val if w_val is None else w_val)
