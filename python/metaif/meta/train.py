"""Outer training (Adam on the implicit total gradient), evaluation, checkpoints and retraining.

The objective is math.md §1's: sum_i c_i L_i(theta_i(lambda), lambda) + gamma/2 ||lambda||^2 with
c_i = 1/m. Training samples meta-batches of tasks (seeded); removing tasks or instances sets
their weights to zero and keeps every other weight, as retraining ground truth requires.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.tasks import TaskSet
from ..utils.config import check, check_choice, config, finite, setting
from ..utils.io import save_torch
from .batch import TaskBatch, Weights
from .binding import meta_gradient
from .problem import TrainableProblem

__all__ = ["DTYPES", "Accuracy", "TrainConfig", "TrainResult", "evaluate", "meta_train", "outer_gradient",
           "retrain", "solve_outer"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@config
class TrainConfig:
    """Outer training: Adam on the implicit total gradient."""

    steps: int = setting(300, "Adam steps")
    meta_batch: int = setting(16, "tasks per step (0: all tasks every step, full-batch descent)")
    lr: float = setting(1e-3, "Adam learning rate")
    seed: int = setting(0, "seed of the initialisation and of the meta-batch draws")
    dtype: str = setting("float32", "parameter dtype", choices=tuple(DTYPES))
    checkpoint_every: int = setting(50, "steps between checkpoints")

    def __post_init__(self) -> None:
        for name in ("steps", "meta_batch"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, self, name, "an integer >= 0",
                  getattr(self, name))
        check(finite(self.lr) and self.lr > 0, self, "lr", "a finite number > 0", self.lr)
        check_choice(self, "dtype", self.dtype, DTYPES)
        check(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1, self, "checkpoint_every",
              "an integer >= 1", self.checkpoint_every)


def outer_gradient(problem, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The problem's own ``outer_gradient`` where it has one, else :func:`~.binding.meta_gradient`."""
    own = getattr(problem, "outer_gradient", None)
    return own(lam, batch, task_weights) if own is not None else meta_gradient(problem, lam, batch, task_weights)


@dataclass
class TrainResult:
    """The trained ``lam [p]``, outer losses per step, the last inner ``max ||grad_theta F_i||``,
    training wall time (s) and, for retraining with test tasks, the meta-test accuracy."""

    lam: torch.Tensor
    losses: list[float] = field(default_factory=list)
    inner_grad_norm: float = 0.0
    wall_time: float = 0.0
    accuracy: Accuracy | None = None


def meta_train(problem: TrainableProblem, tasks: TaskSet, config: TrainConfig, lam0: torch.Tensor | None = None,
               weights: Weights | None = None, checkpoint: str | Path | None = None,
               progress: bool = True) -> TrainResult:
    """Train lambda from ``lam0`` (default: the problem's seeded init); resumes from ``checkpoint``
    when it holds a run of the same configuration and task set."""
    dtype = DTYPES[config.dtype]
    weights = weights or Weights.uniform(tasks, dtype)
    lam = (problem.init_lambda(config.seed, dtype) if lam0 is None else lam0.detach().to(dtype)).clone()
    lam.requires_grad_(True)
    opt = torch.optim.Adam([lam], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    # Everything that fixes the trajectory except the number of steps, so a run can be extended.
    identity = {"config": {k: v for k, v in asdict(config).items() if k != "steps"},
                "tasks": tasks.fingerprint(), "form": getattr(problem, "form", type(problem).__name__),
                "weights": float(weights.c.sum() + weights.w_tr.sum() + weights.w_val.sum())}
    result, start = TrainResult(lam.detach()), 0
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.exists():
        state = torch.load(path, weights_only=False)
        if state["identity"] != identity:
            raise ValueError(f"{path}: checkpoint of a different run ({state['identity']}); "
                             f"use another path or delete it")
        with torch.no_grad():
            lam.copy_(state["lam"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, result.losses = state["step"], state["losses"]
    active = torch.nonzero(weights.c > 0).flatten()
    batch_size = len(active) if config.meta_batch == 0 else min(config.meta_batch, len(active))
    began = time.perf_counter()
    bar = tqdm(range(start, config.steps), disable=not progress, desc="meta-train", leave=False)
    for step in bar:
        rows = active if batch_size == len(active) else active[torch.randperm(len(active), generator=gen)[:batch_size]]
        batch = TaskBatch.from_taskset(tasks, rows, dtype, weights.w_tr[rows], weights.w_val[rows])
        scale = len(active) / batch_size  # unbiased estimate of sum over all active tasks
        grad, info = outer_gradient(problem, lam.detach(), batch, weights.c[rows] * scale)
        opt.zero_grad()
        lam.grad = grad + problem.gamma * lam.detach()
        opt.step()
        result.losses.append(info["outer_loss"])
        result.inner_grad_norm = info["inner_grad_norm"]
        bar.set_postfix(loss=f"{info['outer_loss']:.4f}")
        if path is not None and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            save_torch(path, {"identity": identity, "lam": lam.detach(), "opt": opt.state_dict(),
                          "gen": gen.get_state(), "step": step + 1, "losses": result.losses})
    result.lam, result.wall_time = lam.detach().clone(), time.perf_counter() - began
    return result


def solve_outer(problem: TrainableProblem, tasks: TaskSet, lam0: torch.Tensor, weights: Weights | None = None,
                tol: float = 1e-9, max_iter: int = 1000) -> TrainResult:
    """Full-batch L-BFGS (strong Wolfe) on ``sum_i c_i L_i + gamma/2 ||lambda||^2`` from ``lam0``
    until ``||D_lambda L|| <= tol``: the stationary lambda* that influence functions linearise
    around, and the warm-started re-solve that is their ground truth (math.md §1)."""
    dtype = lam0.dtype
    weights = weights or Weights.uniform(tasks, dtype)
    active = torch.nonzero(weights.c > 0).flatten()
    batch = TaskBatch.from_taskset(tasks, active, dtype, weights.w_tr[active], weights.w_val[active])
    lam = lam0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([lam], lr=1.0, max_iter=max_iter, history_size=50, tolerance_grad=tol,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")
    result = TrainResult(lam.detach())

    def closure():
        grad, info = outer_gradient(problem, lam.detach(), batch, weights.c[active])
        lam.grad = grad + problem.gamma * lam.detach()
        result.losses.append(info["weighted_loss"] + 0.5 * problem.gamma * float(lam.detach().pow(2).sum()))
        result.inner_grad_norm = info["inner_grad_norm"]
        return torch.tensor(result.losses[-1], dtype=dtype)

    began = time.perf_counter()
    opt.step(closure)
    result.lam, result.wall_time = lam.detach().clone(), time.perf_counter() - began
    return result


@dataclass(frozen=True)
class Accuracy:
    """Mean query accuracy over tasks with its 95% confidence half-width."""

    mean: float
    ci95: float
    tasks: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f} ({self.tasks} tasks)"


def evaluate(problem: TrainableProblem, lam: torch.Tensor, tasks: TaskSet, batch_size: int = 100,
             dtype: torch.dtype = torch.float32) -> Accuracy:
    """Adapt on each task's train split, score accuracy on its validation split."""
    accs = []
    for start in range(0, len(tasks), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(tasks)))
        batch = TaskBatch.from_taskset(tasks, rows, dtype)
        if batch.y_val.is_floating_point():
            raise ValueError("evaluate reports accuracy, which needs integer class labels")
        logits = problem.predict(lam.to(dtype), batch)
        loss = getattr(problem, "loss", None)
        predicted = loss.predict(logits) if loss is not None else logits.argmax(-1)
        accs.append((predicted == batch.y_val).to(torch.float64).mean(-1))
    acc = torch.cat(accs)
    half = 1.96 * float(acc.std(unbiased=True)) / math.sqrt(len(acc)) if len(acc) > 1 else float("nan")
    return Accuracy(float(acc.mean()), half, len(acc))


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
