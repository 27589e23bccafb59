"""The seam: every method the meta layer and the influence engine may call on a problem.

A problem is any object that satisfies :class:`BilevelProblem` (objectives of one task on flat
vectors and the task's inner solution, math.md §1). Declaring more unlocks faster paths; the
engine looks at what a problem declares, never at its class:

* :class:`FeatureHeadProblem`: lambda is a shared body's parameters and theta_i a head on the
  body's features (math.md §14(b)). Every body pass then runs once per unique image and the
  per-task work is batched in feature space. A problem that declares only this gets the
  :class:`BilevelProblem` methods derived from it (:class:`~metaif.meta.heads.FeatureHead`).
* :class:`HeadCurvature`: the head is linear with a GLM loss, so its Hessian has the exact
  few-shot factor (Woodbury) and an EK-FAC form.

Shapes: ``theta [q]``, ``lam [p]``, one task's inputs ``x [n, ...]``, targets ``y [n]`` (labels)
or ``[n, ...]`` (real values), weights ``w [n]``; feature-space forms take B tasks at once,
``theta [B, q]``, features ``phi [B, n, h]``. Objectives must be pure torch (``torch.func``
transforms them; no ``.item()`` or data-dependent control flow).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["BilevelProblem", "FeatureHeadProblem", "HeadCurvature", "TrainableProblem"]


@runtime_checkable
class BilevelProblem(Protocol):
    """One task's objectives and inner solution (math.md §1): ``theta_i(lam) = argmin F_i``."""

    gamma: float  # outer L2 weight: the objective adds gamma/2 ||lam||^2

    def inner_objective(self, theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``F_i(theta, lam)``: weighted train loss plus the inner regulariser, a scalar."""

    def outer_objective(self, theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``L_i(theta, lam)``: weighted validation loss, a scalar."""

    def solve_inner(self, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    theta0: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
        """``theta_i [q]`` (warm-started from ``theta0`` when given) and its ``||grad_theta F_i||``."""


@runtime_checkable
class FeatureHeadProblem(Protocol):
    """A shared body ``phi = body(lam, x)`` with a per-task head ``theta`` in feature space."""

    gamma: float
    body: object      # callable (lam [p], x [N, ...]) -> [N, h] with num_params, out_features (a FlatModel)
    theta_dim: int    # q

    def head_inner_objective(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor,
                             w: torch.Tensor) -> torch.Tensor:
        """``F_i`` of B tasks ``[B]`` (regulariser included; strictly convex in theta)."""

    def head_outer_objective(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor,
                             w: torch.Tensor) -> torch.Tensor:
        """``L_i`` of B tasks ``[B]``."""


@runtime_checkable
class HeadCurvature(Protocol):
    """Optional, with :class:`FeatureHeadProblem`: the head's fast paths."""

    def head_inner_grad(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``grad_theta F_i`` ``[B, q]``, differentiable in phi."""

    def head_curvature(self, theta: torch.Tensor, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                       damping: float):
        """``grad^2_theta F_i + damping I`` as a :class:`~metaif.curvature.LinearHeadCurvature`."""

    def solve_heads(self, phi: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                    theta0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads ``[B, q]`` of B tasks and their ``||grad_theta F_i|| [B]``."""


@runtime_checkable
class TrainableProblem(Protocol):
    """What outer training and evaluation call. The outer gradient is
    :func:`~metaif.meta.binding.meta_gradient` unless the problem has its own
    ``outer_gradient(lam, batch, task_weights) -> (grad [p], info)`` (iMAML does)."""

    gamma: float

    def init_lambda(self, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A seeded initial ``lam [p]``."""

    def predict(self, lam: torch.Tensor, batch) -> torch.Tensor:
        """Validation outputs ``[B, v, K]`` after adapting each task on its train split."""
