"""The retrain's L-BFGS with and without the total-Hessian CG's preconditioner as its metric.

Reads a finished (or partly finished) ``metaif experiment table1`` folder as ``refine_edits.py`` does,
takes the random removal set of its ``--protocols random`` rows at one level and, from lambda*,
minimises the objective without the removed items by full-batch L-BFGS (strong Wolfe, history 50: the
retrain's) twice: in lambda itself ("plain"), and in z with lambda = lambda* + M^{-1/2} z
("preconditioned"), M the spectral preconditioner the total-Hessian CG uses (``--rank`` Lanczos pairs of
the damped total Hessian at lambda*), so that the curvature directions Lanczos captured are scaled to
about 1 from the first iteration on. Prints every
``--every`` iterations the objective, its largest gradient entry, the meta-test accuracy, the objective
evaluations and the seconds spent minimising; stops at ``--iterations`` or at the retrain's floor
(lambda*'s own largest gradient entry under the run's --retrain-floor).

    python benchmarks/preconditioned_polish.py --run runs/table1-omniglot --seed 0 --level train --iterations 30
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from metaif.experiments.common import Workspace, accuracy, analyze, load_experiment_config, train_model
from metaif.experiments.paper import removal_sets
from metaif.experiments.retrain import stop_floor
from metaif.linalg.cg import SpectralPreconditioner
from metaif.meta import Weights, full_objective

LEVELS = {"task": "tasks", "train": "train", "val": "val"}


def ritz_values(pre: SpectralPreconditioner) -> torch.Tensor:
    """The Ritz values theta ``[rank]`` the preconditioner was built from (it keeps 1/theta - 1/sigma)."""
    return 1.0 / (pre.shift + 1.0 / pre.sigma)


def inverse_square_root(pre: SpectralPreconditioner) -> Callable[[torch.Tensor], torch.Tensor]:
    """``r -> M^{-1/2} r`` for ``r [p]``: ``M^{-1}``'s eigenpairs are the Ritz pairs (1/theta) and
    1/sigma on their complement."""
    scale = ritz_values(pre).rsqrt() - pre.sigma ** -0.5
    return lambda r: r * pre.sigma ** -0.5 + (scale * (r @ pre.vectors)) @ pre.vectors.mT


def minimise(objective, start: torch.Tensor, transform, iterations: int, floor: float, every: int, score, arm: str):
    """L-BFGS on ``z -> objective(start + transform(z))`` from z = 0 (``transform`` symmetric, so the
    gradient in z is ``transform`` of the gradient in lambda); one row at the start and per ``every``
    iterations."""
    z = torch.zeros_like(start, requires_grad=True)
    # max_eval: torch's default, max_iter * 5 // 4, is 1 at max_iter=1 and leaves the line search no trial.
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=1, max_eval=25, history_size=50, tolerance_grad=0.0,
                            tolerance_change=0.0, line_search_fn="strong_wolfe")
    last: dict = {}
    evaluations, spent, rows = 0, 0.0, []

    def evaluate(point: torch.Tensor) -> tuple[float, torch.Tensor]:
        nonlocal evaluations
        if "z" not in last or not torch.equal(last["z"], point):
            value, grad = objective(start + transform(point))
            evaluations += 1
            last.update(z=point.clone(), value=value, grad=grad)
        return last["value"], last["grad"]

    def closure() -> torch.Tensor:
        value, grad = evaluate(z.detach())
        z.grad = transform(grad)
        return torch.tensor(value)

    for iteration in range(iterations + 1):
        began = time.perf_counter()
        if iteration:
            opt.step(closure)
        value, grad = evaluate(z.detach())
        spent += time.perf_counter() - began
        grad_max = float(grad.abs().max())
        done = grad_max <= floor or iteration == iterations
        if iteration % every == 0 or done:
            rows.append({"arm": arm, "iteration": iteration, "objective": value, "grad_max": grad_max,
                         "accuracy": score(start + transform(z.detach())), "evaluations": evaluations,
                         "seconds": spent})
            print(f"{arm:14s} iteration {iteration:3d}: objective {value:.6f}, max |grad| {grad_max:.2e}, "
                  f"accuracy {rows[-1]['accuracy']:.4f}, {evaluations} evaluations, {spent:6.1f} s", flush=True)
        if done:
            return rows
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a `metaif experiment table1` --out folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level", choices=tuple(LEVELS), default="train", help="which removal set of the run")
    parser.add_argument("--iterations", type=int, default=30, help="L-BFGS iterations per arm at most")
    parser.add_argument("--rank", type=int, default=20, help="Lanczos pairs of the preconditioner")
    parser.add_argument("--every", type=int, default=5, help="print (and score) every this many iterations")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    for name in ("iterations", "rank", "every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: a positive integer; got {getattr(args, name)}")
    torch.set_num_threads(args.threads)

    folder = Path(args.run)
    config = load_experiment_config(folder / "config.json")
    run = replace(config.run, seed=args.seed, train=replace(config.run.train, seed=args.seed))
    trained = train_model(run, config.analysis, Workspace(folder / f"seed{args.seed}" / "model", progress=False))
    analyzer = analyze(trained, config.analysis, progress=False)
    shapes = (len(trained.train), trained.train.y_train.shape[1], trained.train.y_val.shape[1])
    removal = removal_sets("random", config.fraction, args.seed, None, shapes)
    weights = Weights.uniform(trained.train, trained.lam.dtype).without_positions(
        **{LEVELS[args.level]: removal[LEVELS[args.level]]})
    floor = stop_floor(trained, config.analysis)

    began = time.perf_counter()
    op, solver = analyzer.hessian.operator(), config.analysis.influence.solver
    damping = solver.damping
    pre = SpectralPreconditioner(lambda v: op.matvec(v) + damping * v, op, args.rank, solver.seed)
    built = time.perf_counter() - began
    ritz = ritz_values(pre).tolist()
    print(f"preconditioner: {pre.rank} Lanczos pairs of H + {damping:g} I in {built:.1f} s, Ritz values "
          f"{min(ritz):.3g} ... {max(ritz):.3g}; floor {floor:.3g}", flush=True)

    def objective(lam: torch.Tensor) -> tuple[float, torch.Tensor]:
        return full_objective(trained.problem, trained.train, lam, weights)

    def score(lam: torch.Tensor) -> float:
        return accuracy(trained, lam).mean

    rows = []
    for arm, transform in (("preconditioned", inverse_square_root(pre)), ("plain", lambda r: r)):
        rows += minimise(objective, trained.lam, transform, args.iterations, floor, args.every, score, arm)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"run": args.run, "seed": args.seed, "level": args.level, "tasks": len(trained.train),
             "parameters": trained.lam.numel(), "rank": pre.rank, "damping": damping,
             "preconditioner_seconds": built, "ritz": [min(ritz), max(ritz)], "floor": floor,
             "lambda_star_accuracy": score(trained.lam), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
