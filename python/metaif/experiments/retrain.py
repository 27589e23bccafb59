"""Retraining without tasks or instances: the ground truth that influence estimates approximate
(their weights zeroed, all others kept; math.md §1), warm-started from lambda* or from scratch."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch

from ..data.tasks import TaskSet
from ..linalg import MetaifWarning
from ..meta import TrainConfig, TrainResult, Weights, evaluate, meta_train, solve_outer
from ..meta.problem import TrainableProblem, anchored
from ..meta.train import DTYPES
from .common import AnalysisConfig, Trained
from .run import build

__all__ = ["retrain", "retrain_from_scratch", "retrain_without", "stop_floor"]


def retrain(problem: TrainableProblem, tasks: TaskSet, config: TrainConfig, lam_star: torch.Tensor | None = None,
            remove_tasks=(), remove_instances=(), warm_start: bool = True, test: TaskSet | None = None,
            progress: bool = False) -> TrainResult:
    """Re-solve with tasks/instances removed (their weights zeroed, all others kept), with the same
    seed and schedule: warm-started from ``lam_star`` (the ground truth influence functions
    approximate) or from the seeded initialisation (``warm_start=False``). With ``test`` tasks the
    result carries the new meta-test accuracy."""
    if warm_start and lam_star is None:
        raise ValueError("retrain(warm_start=True) needs lam_star")
    weights = Weights.uniform(tasks, DTYPES[config.dtype]).without(tasks, remove_tasks, remove_instances)
    result = meta_train(problem, tasks, config, lam0=lam_star if warm_start else None, weights=weights,
                        progress=progress)
    if test is not None:
        result.accuracy = evaluate(problem, result.lam, test, dtype=DTYPES[config.dtype])
    return result


def _without(trained: Trained, tasks, val, train) -> Weights:
    """Uniform weights over ``trained``'s tasks with the given positions / instances zeroed."""
    return Weights.uniform(trained.train, trained.lam.dtype, trained.lam.device).without_positions(tasks, val, train)


def stop_floor(trained: Trained, analysis: AnalysisConfig) -> float:
    """The ``floor`` of retraining's stopping rule: lambda*'s own max |D_lambda L| with every item in
    (one evaluation, kept in ``trained.summary``) under ``analysis.retrain_floor``, else 0."""
    if not analysis.retrain_floor:
        return 0.0
    if "stationarity_max" not in trained.summary:
        at_star = solve_outer(trained.problem, trained.train, trained.lam, max_iter=0)
        trained.summary["stationarity_max"] = at_star.stop["final_grad_max"]
    return trained.summary["stationarity_max"]


def retrain_without(trained: Trained, analysis: AnalysisConfig, tasks=(), val=(), train=(),
                    checkpoint: Path | None = None, progress: bool = False) -> TrainResult:
    """Warm-started retraining without the given task positions / ``(position, j)`` instances
    (resuming from ``checkpoint``): the retrained lambda, wall seconds and, for L-BFGS, its
    iterations, final ``||D_lambda L||`` and stopping rule (``analysis.polish_tol``, and
    ``analysis.retrain_rtol`` and :func:`stop_floor` when set). Warns when L-BFGS stops at its cap (``analysis.polish``)
    instead of its tolerance."""
    weights = _without(trained, tasks, val, train)
    if analysis.retrain != "lbfgs":
        config = replace(trained.run.train, steps=analysis.retrain_steps)
        return meta_train(trained.problem, trained.train, config, lam0=trained.lam, weights=weights,
                          checkpoint=checkpoint, progress=progress)
    cap = max(analysis.polish, 1)
    result = solve_outer(trained.problem, trained.train, trained.lam, weights, tol=analysis.polish_tol, max_iter=cap,
                         checkpoint=checkpoint, progress=progress, desc="retrain (L-BFGS)", rtol=analysis.retrain_rtol,
                         floor=stop_floor(trained, analysis))
    if result.stop["reason"] == "cap":
        warnings.warn(f"retraining stopped at its cap of {cap} L-BFGS iterations (--polish) with max |D_lambda L| = "
                      f"{result.stop['final_grad_max']:.2e}, above its threshold {result.stop['threshold']:.2e} "
                      f"(--polish-tol, --retrain-rtol, --retrain-floor): the retrained lambda is on its way to the "
                      f"optimum without the removed items", MetaifWarning, stacklevel=2)
    return result


def retrain_from_scratch(trained: Trained, analysis: AnalysisConfig, tasks=(), val=(), train=(),
                         checkpoint: Path | None = None, progress: bool = False) -> TrainResult:
    """The paper's protocol: meta-train from the seeded initialisation with the run's steps and
    schedule on the data without the given items (their weights zeroed), then the polish lambda* had
    (L-BFGS with its anchor rho, around the new Adam result), stopping on the retrain's rule
    (``analysis.polish_tol``, ``analysis.retrain_rtol``, :func:`stop_floor`). ``checkpoint`` (a file name stem) resumes
    both stages. The result's wall time counts both stages, its iterations the polish's. With nothing
    removed and the anchor given (not chosen from a grid) it is lambda* again."""
    problem = build(trained.run)[0]
    weights = _without(trained, tasks, val, train)
    paths = (None, None) if checkpoint is None else (checkpoint.with_suffix(".adam.pt"), checkpoint.with_suffix(".pt"))
    adam = meta_train(problem, trained.train, trained.run.train, weights=weights, checkpoint=paths[0], progress=progress)
    rho = trained.summary.get("rho") or 0.0
    result = solve_outer(anchored(problem, rho, adam.lam), trained.train, adam.lam, weights, tol=analysis.polish_tol,
                         max_iter=max(analysis.polish, 1), checkpoint=paths[1], progress=progress,
                         desc="retrain from scratch: polish", rtol=analysis.retrain_rtol,
                         floor=stop_floor(trained, analysis))
    result.wall_time += adam.wall_time
    return result
