"""The seam: every method the meta layer and the influence engine may call on a problem.

A problem is any object that satisfies :class:`BilevelProblem` (objectives of one task on flat
vectors and the task's inner solution as an argmin, math.md §1) or :class:`UnrolledProblem` (an
explicit, differentiable inner map, math.md §14(c)). The seam needs different things of the two:
an argmin is differentiated implicitly (its solution must be stationary, and the engine needs the
inner objective's derivatives), an explicit map is differentiated straight through its steps (the
engine needs only ``adapt`` to be differentiable in lambda and in the weights). Declaring more
unlocks faster paths; the engine looks at what a problem declares, never at its class:

* :class:`FeatureHeadProblem`: lambda is a shared body's parameters and theta_i a head on the
  body's features (math.md §14(b)). Every body pass then runs once per unique image and the
  per-task work is batched in feature space. A problem that declares only this gets the
  :class:`BilevelProblem` methods derived from it (:class:`~metaif.meta.heads.FeatureHead`).
* :class:`HeadCurvature`: the head is linear with a GLM loss, so its Hessian has the exact
  few-shot factor (Woodbury) and an EK-FAC form.
* :class:`HeadSolveSettings`: where the generic head solve of a feature-head problem stops.

The outer objective adds ``gamma/2 ||lam - anchor||^2`` (math.md §1 with an optional centre:
``anchor`` is an attribute of the problem, absent or ``None`` for 0); :func:`outer_l2` is the one
place that evaluates it, and its Hessian is ``gamma I`` either way.

Shapes: ``theta [q]``, ``lam [p]``, one task's inputs ``x [n, ...]``, targets ``y [n]`` (labels)
or ``[n, ...]`` (real values), weights ``w [n]``; feature-space forms take B tasks at once,
``theta [B, q]``, features ``phi [B, n, h]``. Objectives must be pure torch (``torch.func``
transforms them; no ``.item()`` or data-dependent control flow).
"""

from __future__ import annotations

import copy
from typing import Protocol, runtime_checkable

import torch

__all__ = ["BilevelProblem", "FeatureHeadProblem", "HeadCurvature", "HeadSolveSettings", "TrainableProblem",
           "UnrolledProblem", "anchored",
           "outer_l2"]


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
class UnrolledProblem(Protocol):
    """An explicit inner map (math.md §14(c)): ``theta_i(lam, w) = adapt(lam, x, y, w)``,
    differentiable (``torch.func``) in ``lam`` and in the weights ``w``; classic MAML."""

    gamma: float

    def adapt(self, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``theta_i [q]`` from ``lam`` on one task's train split."""

    def inner_objective(self, theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """The train loss the map descends (for reports; the map is what counts)."""

    def outer_objective(self, theta: torch.Tensor, lam: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
        """``L_i(theta, lam)``, a scalar."""


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
class HeadSolveSettings(Protocol):
    """Optional, with :class:`FeatureHeadProblem` (both members, or neither): where the generic
    damped-Newton head solve stops. Without them it stops at a gradient norm set by the dtype
    (``metaif.meta.heads.NEWTON_TOL``) or after 50 steps."""

    inner_tol: float       # ||grad_theta F_i|| to reach
    inner_max_iter: int    # Newton steps at most


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


def outer_l2(problem, lam: torch.Tensor) -> tuple[float, torch.Tensor]:
    """``gamma/2 ||lam - anchor||^2`` and its gradient ``gamma (lam - anchor)`` (``[p]``)."""
    anchor = getattr(problem, "anchor", None)
    diff = lam if anchor is None else lam - anchor.to(lam)
    return 0.5 * problem.gamma * float(diff.pow(2).sum()), problem.gamma * diff


def anchored(problem, rho: float, lam0: torch.Tensor):
    """A shallow copy of ``problem`` whose outer L2 also pulls toward ``lam0``:
    ``gamma/2 ||lam - a||^2 + rho/2 ||lam - lam0||^2 = (gamma + rho)/2 ||lam - c||^2 + const`` with
    ``c = (gamma a + rho lam0) / (gamma + rho)``: an exact proximal anchor, seen by every formula
    and every re-solve through ``gamma`` and ``anchor``."""
    if not rho >= 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    if rho == 0:
        return problem
    out = copy.copy(problem)
    old = getattr(problem, "anchor", None)
    previous = torch.zeros_like(lam0) if old is None else old.to(lam0)
    total = problem.gamma + rho
    out.gamma = total
    out.anchor = ((problem.gamma * previous + rho * lam0.detach()) / total).clone()
    return out
