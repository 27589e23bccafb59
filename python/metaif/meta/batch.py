"""A batch of tasks as stacked tensors, with the per-example weights of math.md §1."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tasks import TaskSet


@dataclass
class Weights:
    """Per-task ``c [m]`` and per-instance ``w_tr [m, n]``, ``w_val [m, v]`` weights (math.md §1)."""

    c: torch.Tensor
    w_tr: torch.Tensor
    w_val: torch.Tensor

    @staticmethod
    def uniform(tasks: TaskSet, dtype: torch.dtype = torch.float32) -> Weights:
        m, n, v = len(tasks), tasks.y_train.shape[1], tasks.y_val.shape[1]
        return Weights(torch.full((m,), 1.0 / m, dtype=dtype), torch.full((m, n), 1.0 / n, dtype=dtype),
                       torch.full((m, v), 1.0 / v, dtype=dtype))

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
    """B tasks: ``x_tr [B, n, ...]``, ``y_tr [B, n]``, ``w_tr [B, n]`` (default 1/n), and the
    same for the validation split with ``v`` points."""

    x_tr: torch.Tensor
    y_tr: torch.Tensor
    w_tr: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    w_val: torch.Tensor

    def __len__(self) -> int:
        return self.x_tr.shape[0]

    @staticmethod
    def from_taskset(tasks: TaskSet, rows: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                     w_tr: torch.Tensor | None = None, w_val: torch.Tensor | None = None) -> TaskBatch:
        """Rows ``rows`` (positions) of ``tasks``; weights default to :meth:`Weights.uniform`'s."""
        sub = tasks if rows is None else tasks.subset(rows)
        uniform = Weights.uniform(sub, dtype)
        return TaskBatch(sub.x_train.to(dtype), sub.y_train, uniform.w_tr if w_tr is None else w_tr.to(dtype),
                         sub.x_val.to(dtype), sub.y_val, uniform.w_val if w_val is None else w_val.to(dtype))
