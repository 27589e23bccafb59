"""The finite-difference oracle of math.md §4: total-Hessian-vector products from central
differences of re-solved total gradients (float64 only). It shares no code with the autograd
paths it checks, and is the fallback for models that cannot be differentiated three times."""

from __future__ import annotations

import torch

from ..meta.implicit import total_gradient
from ..meta.problem import outer_l2


def total_gradient_sum(problem, lam: torch.Tensor, tasks: list[tuple], task_weights: torch.Tensor) -> torch.Tensor:
    """``D_lambda L(lambda) = sum_i c_i g_i + gamma (lambda - anchor)`` with every inner problem re-solved."""
    total = outer_l2(problem, lam)[1]
    for c, data in zip(task_weights, tasks):
        total = total + c * total_gradient(problem, lam, *data)
    return total


def finite_difference_hvp(problem, lam: torch.Tensor, tasks: list[tuple], v: torch.Tensor,
                          task_weights: torch.Tensor, h: float | None = None) -> torch.Tensor:
    """The test oracle: central differences of re-solved total gradients (float64 only)."""
    if lam.dtype != torch.float64:
        raise ValueError("finite_difference_hvp needs float64 (its error is O(h^2) + O(tol / h))")
    step = h if h is not None else 1e-5 * max(float(lam.norm()), 1.0)
    plus = total_gradient_sum(problem, lam + step * v, tasks, task_weights)
    minus = total_gradient_sum(problem, lam - step * v, tasks, task_weights)
    return (plus - minus) / (2 * step)
