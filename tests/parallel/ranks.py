"""What each rank of the distributed tests runs (importable: the ranks are spawned processes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig
from metaif.meta import MamlConfig, MamlProblem, TrainConfig, Weights, meta_gradient, meta_train
from metaif.meta.batch import TaskBatch
from metaif.meta.train import outer_gradient
from metaif.meta.unrolled import default_model
from metaif.models import mlp
from metaif.parallel import World
from tests.helpers import make_problem, make_taskset

ITEMS_VAL, ITEMS_TRAIN = [(0, 1), (3, 2), (5, 0)], [(1, 0), (4, 2)]
# at this untrained lambda the total Hessians reach -1.24 (logistic), -0.53 (imaml) and below -2 (maml)
CONFIG = InfluenceConfig(solver=SolverConfig(method="cg", damping=5.0, rtol=1e-12, max_iter=500), chunk=1,
                         image_chunk=16)


def _problem(form: str):
    if form == "maml":
        return MamlProblem(default_model(mlp(64, (4,), "tanh"), 3), MamlConfig(ways=3, inner_steps=2, inner_lr=0.1))
    return make_problem(form)


def influence_results(form: str, world: World | None = None) -> dict[str, torch.Tensor]:
    """Training gradients, every influence quantity and an edit of a small float64 problem."""
    torch.manual_seed(0)
    problem, tasks, test = _problem(form), make_taskset(6, seed=1), make_taskset(4, seed=7)
    lam = problem.init_lambda(0, torch.float64)
    batch = TaskBatch.from_taskset(tasks, dtype=torch.float64)
    c = Weights.uniform(tasks, torch.float64).c
    world = World.current() if world is None else world
    out = {"outer_gradient": outer_gradient(problem, lam, batch, c, world)[0]}
    if form == "logistic":
        out["meta_gradient"] = meta_gradient(problem, lam, batch, c, world)[0]
    out["trained"] = meta_train(problem, tasks, TrainConfig(steps=3, meta_batch=4, lr=1e-2, dtype="float64"),
                                progress=False).lam
    analyzer = InfluenceAnalyzer(problem, lam, tasks, config=CONFIG, world=world)
    out["task_if"] = analyzer.task_influence()
    out["val_if"] = analyzer.val_influence(ITEMS_VAL)
    out["train_if"] = analyzer.train_influence(ITEMS_TRAIN)
    scores = analyzer.scores(test)
    out.update(scores_tasks=scores.tasks, scores_val=scores.val, scores_train=scores.train)
    out["edited"] = analyzer.edit(tasks=[2], val=ITEMS_VAL[:1], train=ITEMS_TRAIN[:1])
    out["hvp"] = analyzer.hvp(torch.linspace(-1, 1, lam.numel(), dtype=torch.float64))
    return out


def save_influence_results(form: str, folder: str) -> None:
    results = influence_results(form)
    if World.current().writer:
        torch.save(results, Path(folder) / f"{form}.pt")


def die_on_rank_one(folder: str) -> None:
    """Rank 1 dies before the first collective; rank 0 must fail there, not wait forever."""
    world = World.current()
    if world.rank == 1:
        os._exit(3)
    began = time.monotonic()
    try:
        world.sum_blocks([torch.ones(3)], torch.ones(3))
        world.barrier()
    finally:
        # whole or not at all: the launcher may stop this rank while it writes
        partial = Path(folder) / "rank0_seconds.partial"
        partial.write_text(f"{time.monotonic() - began:.2f}")
        os.replace(partial, Path(folder) / "rank0_seconds")


def train_in_own_folder(base: str) -> None:
    """``metaif train`` on every rank with ``--out`` a folder of the rank's own (as on nodes without
    shared storage); exits with the command's code."""
    import sys

    from metaif.cli import main

    rank = World.current().rank
    code = main(["train", "--steps", "2", "--train-tasks", "8", "--test-tasks", "8", "--quiet",
                 "--out", str(Path(base) / f"rank{rank}")])
    if code:
        sys.exit(code)
