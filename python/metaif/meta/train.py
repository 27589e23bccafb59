"""Outer training (Adam on the implicit total gradient), polishing (full-batch L-BFGS) and evaluation,
as library functions that resume from a checkpoint of the same run.

The objective is math.md §1's: sum_i c_i L_i(theta_i(lambda), lambda) + gamma/2 ||lambda||^2 with
c_i = 1/m. Training samples meta-batches of tasks (seeded); removing tasks or instances sets
their weights to zero and keeps every other weight, as retraining ground truth requires.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..curvature import INPUT_CHUNK
from ..data.tasks import TaskSet
from ..ops import has_kernels
from ..parallel import World
from ..utils.checkpoint import Checkpoint
from ..utils.config import check, check_choice, config, finite, results_settings, setting
from ..utils.progress import stage
from ..utils.store import StaleResults, fingerprint
from .batch import TaskBatch, Weights
from .binding import TASK_CHUNK, chunk_spans, meta_gradient
from .problem import TrainableProblem, outer_l2

__all__ = ["DTYPES", "Accuracy", "TrainConfig", "TrainResult", "device_of", "evaluate", "full_objective", "meta_train",
           "outer_gradient", "solve_outer"]

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
    device: str = setting("cpu", "where training runs: cpu or cuda (cuda:N); the tasks' inputs move there once",
                          shapes_results=False)

    def __post_init__(self) -> None:
        for name in ("steps", "meta_batch"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, self, name, "an integer >= 0",
                  getattr(self, name))
        check(finite(self.lr) and self.lr > 0, self, "lr", "a finite number > 0", self.lr)
        check_choice(self, "dtype", self.dtype, DTYPES)
        check(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1, self, "checkpoint_every",
              "an integer >= 1", self.checkpoint_every)
        check(_is_device(self.device), self, "device", "cpu, cuda or cuda:N", self.device)


def _is_device(name: str) -> bool:
    try:
        return torch.device(name).type in ("cpu", "cuda")
    except (RuntimeError, TypeError):
        return False


def device_of(config: TrainConfig) -> torch.device:
    """``config.device``, available: a clear error when CUDA is asked for but absent."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device is {config.device!r} but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)")
    if device.type == "cuda" and not has_kernels(device):
        raise ValueError(f"TrainConfig.device is {config.device!r} but this build of metaif has no CUDA kernels: "
                         f"reinstall it where nvcc is on PATH (pip install --no-build-isolation .)")
    return device


# Tasks (and unique inputs) per block of a training step's meta-batch: blocks are what ranks share and
# what the exact sums add, fixed by the data so that any number of ranks gets the same bits; small, so
# that a meta-batch of 16 tasks still keeps four ranks busy. Full-batch objectives (the polish) use the
# bindings' default chunks.
TASK_BLOCK, INPUT_BLOCK = 4, INPUT_CHUNK


def _by_tasks(world: World, gradient, batch: TaskBatch, task_weights: torch.Tensor, like: torch.Tensor,
              block: int) -> tuple[torch.Tensor, dict]:
    """``gradient(block, weights)`` over blocks of ``block`` tasks of ``batch``, the ranks sharing
    whole blocks, summed exactly (gradients shaped like ``like``)."""
    first, last = world.span(len(batch), block=block)
    grads, losses, worst = [], [], 0.0
    for start, end in chunk_spans(last, block, first):
        rows = torch.arange(start, end, device=batch.pos_tr.device)
        grad, info = gradient(batch.select(rows), task_weights[rows])
        grads.append(grad)
        losses.append(torch.tensor(info["weighted_loss"], dtype=torch.float64))
        worst = max(worst, info["inner_grad_norm"])
    weighted = float(world.sum_blocks(losses, torch.zeros((), dtype=torch.float64)))
    return world.sum_blocks(grads, like), {"outer_loss": weighted / float(task_weights.sum()),
                                           "weighted_loss": weighted, "inner_grad_norm": world.max(worst)}


def outer_gradient(problem, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor,
                   world: World = World()) -> tuple[torch.Tensor, dict]:
    """The problem's own ``outer_gradient`` where it has one (over blocks of the tasks, shared by the
    ranks), else :func:`~.binding.meta_gradient` (each rank on its chunks of the tasks and inputs)."""
    own = getattr(problem, "outer_gradient", None)
    if own is None:
        return meta_gradient(problem, lam, batch, task_weights, world)
    return _by_tasks(world, lambda b, c: own(lam, b, c), batch, task_weights, lam, TASK_CHUNK)


def training_gradient(problem, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor,
                      world: World = World()):
    """What outer training steps on: the problem's ``training_gradient`` (an approximation such as
    first-order MAML) or ``outer_gradient`` where it has one, over blocks of the tasks, else
    :func:`~.binding.meta_gradient` in blocks of :data:`TASK_BLOCK` tasks and :data:`INPUT_BLOCK` inputs."""
    own = getattr(problem, "training_gradient", None) or getattr(problem, "outer_gradient", None)
    if own is None:
        return meta_gradient(problem, lam, batch, task_weights, world, TASK_BLOCK, INPUT_BLOCK)
    return _by_tasks(world, lambda b, c: own(lam, b, c), batch, task_weights, lam, TASK_BLOCK)


def _active(weights: Weights) -> torch.Tensor:
    """Positions of the tasks with positive weight (on the CPU)."""
    return torch.nonzero(weights.c.cpu() > 0).flatten()


def _weighted_batch(tasks: TaskSet, weights: Weights, rows: torch.Tensor,
                    like: torch.Tensor) -> tuple[TaskBatch, torch.Tensor]:
    """Task positions ``rows`` as one batch with their instance weights (dtype and device of ``like``)
    and their task weights."""
    on_device = rows.to(like.device)
    batch = TaskBatch.from_taskset(tasks, rows, like.dtype, weights.w_tr[on_device], weights.w_val[on_device],
                                   like.device)
    return batch, weights.c[on_device]


def _objective(problem, lam: torch.Tensor, batch: TaskBatch, task_weights: torch.Tensor,
               world: World) -> tuple[float, torch.Tensor, dict]:
    """The full-batch outer objective, its gradient ``[p]`` and the gradient's info."""
    grad, info = outer_gradient(problem, lam, batch, task_weights, world)
    value, l2_grad = outer_l2(problem, lam)
    return info["weighted_loss"] + value, grad + l2_grad, info


def full_objective(problem: TrainableProblem, tasks: TaskSet, lam: torch.Tensor,
                   weights: Weights | None = None) -> tuple[float, torch.Tensor]:
    """What :func:`solve_outer` minimises, ``sum_i c_i L_i(lambda) + gamma/2 ||lambda - anchor||^2``
    over all of ``tasks`` (``weights`` default uniform), at ``lam [p]``: its value and gradient ``[p]``."""
    weights = weights.to(lam) if weights is not None else Weights.uniform(tasks, lam.dtype, lam.device)
    batch, task_weights = _weighted_batch(tasks, weights, _active(weights), lam)
    value, grad, _ = _objective(problem, lam.detach(), batch, task_weights, World.current())
    return value, grad


@dataclass
class TrainResult:
    """The trained ``lam [p]``, the outer losses per step (or per L-BFGS evaluation), the last
    inner ``max ||grad_theta F_i||``, the wall time in seconds summed over resumed sessions, the
    L-BFGS iterations, final ``||D_lambda L||`` and how the solve stopped (solve_outer), and, for
    retraining with test tasks, the meta-test accuracy."""

    lam: torch.Tensor
    losses: list[float] = field(default_factory=list)
    inner_grad_norm: float = 0.0
    wall_time: float = 0.0
    iterations: int = 0
    grad_norm: float = float("nan")
    accuracy: Accuracy | None = None
    stop: dict = field(default_factory=dict)


def _tensor_digest(t: torch.Tensor | None) -> str | None:
    return None if t is None else fingerprint(t.detach().cpu().double().numpy().tobytes().hex())


def meta_train(problem: TrainableProblem, tasks: TaskSet, config: TrainConfig, lam0: torch.Tensor | None = None,
               weights: Weights | None = None, checkpoint: str | Path | None = None,
               progress: bool = True) -> TrainResult:
    """Train lambda from ``lam0`` (default: the problem's seeded init) by Adam on the total
    gradient plus the outer L2's; resumes from ``checkpoint`` when it holds a run of the same
    configuration and task set (a larger ``steps`` extends it). Over several ranks (torch.distributed)
    each computes its blocks of every meta-batch and the gradients are summed exactly: every rank
    takes the same steps, the ones a single process takes."""
    dtype, device, world = DTYPES[config.dtype], device_of(config), World.current()
    weights = weights.to(device=device, dtype=dtype) if weights is not None else Weights.uniform(tasks, dtype, device)
    lam = (problem.init_lambda(config.seed, dtype) if lam0 is None else lam0.detach()).to(device=device, dtype=dtype)
    lam = lam.clone().requires_grad_(True)
    opt = torch.optim.Adam([lam], lr=config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    # Everything that fixes the trajectory except the number of steps, so a run can be extended.
    identity = {"config": {k: v for k, v in results_settings(config).items() if k not in ("steps", "checkpoint_every")},
                "tasks": tasks.fingerprint(), "form": getattr(problem, "form", type(problem).__name__),
                "gamma": problem.gamma, "anchor": _tensor_digest(getattr(problem, "anchor", None)),
                "lam0": _tensor_digest(lam0), "weights": fingerprint([weights.c.tolist(), weights.w_tr.tolist(),
                                                                    weights.w_val.tolist()])}
    result, start, spent = TrainResult(lam.detach()), 0, 0.0
    saved = Checkpoint(checkpoint, identity, device)
    state = saved.load()
    if state is not None:
        if state["step"] > config.steps:
            raise StaleResults(f"{saved.path}: the checkpoint has {state['step']} steps, more than the {config.steps} "
                               f"asked for; rerun with --force to train again, or ask for at least {state['step']}")
        with torch.no_grad():
            lam.copy_(state["lam"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start, result.losses, spent = state["step"], state["losses"], state.get("seconds", 0.0)
    active = _active(weights)
    batch_size = len(active) if config.meta_batch == 0 else min(config.meta_batch, len(active))
    began = time.perf_counter()
    bar = stage(range(start, config.steps), total=config.steps, initial=start, desc="meta-train",
                disable=not (progress and world.writer))
    for step in bar:
        draw = torch.randperm(len(active), generator=gen, device="cpu")[:batch_size]
        rows = active if batch_size == len(active) else active[draw]
        batch, task_weights = _weighted_batch(tasks, weights, rows, lam)
        scale = len(active) / batch_size  # unbiased estimate of sum over all active tasks
        grad, info = training_gradient(problem, lam.detach(), batch, task_weights * scale, world)
        opt.zero_grad()
        lam.grad = grad + outer_l2(problem, lam.detach())[1]
        opt.step()
        result.losses.append(info["outer_loss"])
        result.inner_grad_norm = info["inner_grad_norm"]
        bar.set_postfix(loss=f"{info['outer_loss']:.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
            saved.save(lam=lam.detach(), opt=opt.state_dict(), gen=gen.get_state(), step=step + 1,
                       losses=result.losses, seconds=spent + time.perf_counter() - began)
    result.lam, result.wall_time = lam.detach().clone(), spent + time.perf_counter() - began
    result.iterations = config.steps
    return result


def solve_outer(problem: TrainableProblem, tasks: TaskSet, lam0: torch.Tensor, weights: Weights | None = None,
                tol: float = 1e-9, max_iter: int = 1000, checkpoint: str | Path | None = None,
                progress: bool = False, desc: str = "polish (L-BFGS)", chunk: int = 10,
                rtol: float = 0.0, floor: float = 0.0) -> TrainResult:
    """Full-batch L-BFGS (strong Wolfe) on ``sum_i c_i L_i + gamma/2 ||lambda - anchor||^2`` from
    ``lam0`` until ``max_j |D_lambda L_j| <= max(tol, rtol * max_j |D_lambda L_j(lam0)|, floor)``,
    ``max_iter`` iterations, or a chunk of iterations that no longer lowers the objective beyond its
    rounding (float32 stalls there): the stationary lambda* that influence functions linearise
    around, and the warm-started re-solve that is their ground truth (math.md §1). The relative
    rule (``rtol > 0``) is what a float32 solve over thousands of tasks can reach, and ``floor`` (say,
    the gradient a polished lambda* was left with) a level it need not go below; ``result.stop``
    records the rule, its threshold, the starting and final ``max |D_lambda L|`` and why it stopped
    (tolerance, cap, or stalled).

    Every ``chunk`` iterations the iterate and the L-BFGS memory go to ``checkpoint`` (a run with
    the same settings resumes from it); ``progress`` shows iterations, loss, ``||D_lambda L||`` and
    time.
    """
    dtype, device, world = lam0.dtype, lam0.device, World.current()
    weights = weights.to(lam0) if weights is not None else Weights.uniform(tasks, dtype, device)
    batch, task_weights = _weighted_batch(tasks, weights, _active(weights), lam0)
    lam = lam0.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([lam], lr=1.0, max_iter=chunk, history_size=50, tolerance_grad=tol,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")
    if not (rtol >= 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be a finite number >= 0 (a fraction of the starting max |D_lambda L|), got {rtol!r}")
    if not (floor >= 0 and math.isfinite(floor)):
        raise ValueError(f"floor must be a finite number >= 0 (a max |D_lambda L| to stop at), got {floor!r}")
    identity = {"tasks": tasks.fingerprint(), "lam0": _tensor_digest(lam0), "tol": tol, "gamma": problem.gamma,
                "anchor": _tensor_digest(getattr(problem, "anchor", None)), "form": getattr(problem, "form", None),
                "weights": fingerprint([weights.c.tolist(), weights.w_tr.tolist(), weights.w_val.tolist()])}
    if rtol:
        identity["rtol"] = rtol
    if floor:
        identity["floor"] = floor
    result, spent = TrainResult(lam.detach()), 0.0
    saved = Checkpoint(checkpoint, identity, device)
    state = saved.load()
    start_grad, first = None, None
    if state is not None:
        with torch.no_grad():
            lam.copy_(state["lam"])
        opt.load_state_dict(state["opt"])
        result.losses, result.iterations, spent = state["losses"], state["iterations"], state["seconds"]
        start_grad = state.get("start_grad")
    elif rtol:
        # the relative threshold needs the starting gradient before L-BFGS's first test of it; that
        # evaluation is then handed to L-BFGS instead of being repeated
        first = _objective(problem, lam.detach(), batch, task_weights, world)
        start_grad = float(first[1].abs().max())
    threshold = max(tol, rtol * start_grad if rtol else 0.0, floor)
    opt.param_groups[0]["tolerance_grad"] = threshold

    def closure():
        nonlocal first
        if first is not None:
            (value, lam.grad, info), first = first, None
        else:
            value, lam.grad, info = _objective(problem, lam.detach(), batch, task_weights, world)
        result.losses.append(value)
        result.inner_grad_norm = info["inner_grad_norm"]
        result.grad_norm = float(lam.grad.norm())
        bar.set_postfix(loss=f"{value:.5g}", grad=f"{result.grad_norm:.2e}", evaluations=len(result.losses))
        return lam.new_tensor(value)

    began = time.perf_counter()
    with stage(total=max_iter, initial=min(result.iterations, max_iter), desc=desc, cap=True,
               disable=not (progress and world.writer)) as bar:
        rounding = 16 * torch.finfo(dtype).eps
        while result.iterations < max_iter:
            before_loss = result.losses[-1] if result.losses else None
            opt.param_groups[0]["max_iter"] = min(chunk, max_iter - result.iterations)
            opt.param_groups[0]["max_eval"] = 25 * chunk  # line searches may take several evaluations
            before = opt.state[lam].get("n_iter", 0)
            opt.step(closure)
            done = opt.state[lam].get("n_iter", 0) - before
            result.iterations += done
            bar.update(done)
            saved.save(lam=lam.detach(), opt=opt.state_dict(), losses=result.losses, iterations=result.iterations,
                       seconds=spent + time.perf_counter() - began, start_grad=start_grad)
            if done < opt.param_groups[0]["max_iter"]:  # converged (or stalled: no descent direction left)
                break
            if before_loss is not None and before_loss - result.losses[-1] <= rounding * abs(result.losses[-1]):
                break  # a whole chunk gained nothing measurable
    if lam.grad is None:  # resumed at max_iter: evaluate once for the record
        closure()
    final_grad = float(lam.grad.abs().max())
    reason = "tolerance" if final_grad <= threshold else "cap" if result.iterations >= max_iter else "stalled"
    result.stop = {"rule": "relative" if rtol else "absolute", "tol": tol, "rtol": rtol, "floor": floor, "threshold": threshold,
                   "start_grad_max": start_grad, "final_grad_max": final_grad, "reason": reason}
    result.lam, result.wall_time = lam.detach().clone(), spent + time.perf_counter() - began
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
    """Adapt on each task's train split, score accuracy on its validation split (on ``lam``'s device)."""
    accs = []
    for start in range(0, len(tasks), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(tasks)), device="cpu")
        batch = TaskBatch.from_taskset(tasks, rows, dtype, device=lam.device)
        if batch.y_val.is_floating_point():
            raise ValueError("evaluate reports accuracy, which needs integer class labels")
        logits = problem.predict(lam.to(dtype), batch)
        loss = getattr(problem, "loss", None)
        predicted = loss.predict(logits) if loss is not None else logits.argmax(-1)
        accs.append((predicted == batch.y_val).to(torch.float64).mean(-1))
    acc = torch.cat(accs).cpu()
    half = 1.96 * float(acc.std(unbiased=True)) / math.sqrt(len(acc)) if len(acc) > 1 else float("nan")
    return Accuracy(float(acc.mean()), half, len(acc))
