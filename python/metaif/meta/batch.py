"""A batch of tasks as stacked tensors, with the per-example weights of math.md §1."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tasks import TaskSet


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
        """Rows ``rows`` (positions) of ``tasks``; weights default to the uniform 1/n, 1/v."""
        sub = tasks if rows is None else tasks.subset(rows)
        n, v = sub.y_train.shape[1], sub.y_val.shape[1]
        return TaskBatch(sub.x_train.to(dtype), sub.y_train, torch.full(sub.y_train.shape, 1.0 / n, dtype=dtype)
                         if w_tr is None else w_tr.to(dtype), sub.x_val.to(dtype), sub.y_val,
                         torch.full(sub.y_val.shape, 1.0 / v, dtype=dtype) if w_val is None else w_val.to(dtype))
