"""Every tensor the library makes lands on its inputs' device, never on torch's default one.

The pipeline runs on CPU inputs with the default device set to ``meta``: a tensor created without
an explicit device becomes a meta tensor, and mixing it with the CPU ones raises. On a GPU the
same omission would put a tensor on the CPU beside CUDA ones (or force a copy): this is the CPU
test of what ``tests/test_cuda.py`` runs on a GPU.
"""

import pytest
import torch

from metaif.data import TaskSet
from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig
from metaif.meta import (
    AnilConfig,
    AnilProblem,
    ImamlConfig,
    ImamlProblem,
    MamlConfig,
    MamlProblem,
    TrainConfig,
    evaluate,
    meta_train,
    solve_outer,
)
from metaif.models import conv4, mlp
from tests.helpers import make_taskset


def image_tasks(m: int, seed: int) -> TaskSet:
    gen = torch.Generator().manual_seed(seed)
    return TaskSet.from_tensors(torch.rand(m, 6, 1, 16, 16, generator=gen), torch.arange(3).repeat(2).expand(m, -1),
                                torch.rand(m, 3, 1, 16, 16, generator=gen), torch.arange(3).expand(m, -1))


PROBLEMS = {
    "anil-conv4": (lambda: AnilProblem(conv4(1, 4, 16), AnilConfig(ways=3)), image_tasks),
    "anil-mlp": (lambda: AnilProblem(mlp(64, (6,), "tanh"), AnilConfig(ways=3)), lambda m, s: make_taskset(m, s, 2)),
    "imaml": (lambda: ImamlProblem(mlp(64, (3,), "tanh"), ImamlConfig(ways=3, delta=2.0)),
              lambda m, s: make_taskset(m, s, 2)),
    "maml": (lambda: MamlProblem(mlp(64, (3,), "tanh"), MamlConfig(ways=3)), lambda m, s: make_taskset(m, s, 2)),
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:neumann stopped")  # ten LiSSA terms: placement is what is checked
@pytest.mark.parametrize("form", list(PROBLEMS))
def test_the_analyzer_makes_nothing_on_the_default_device(form):
    build, tasks_of = PROBLEMS[form]
    problem, tasks, test = build(), tasks_of(3, 0), tasks_of(2, 5)
    lam = problem.init_lambda(0, torch.float64)
    solvers = [SolverConfig(method="cg", damping=20.0, rtol=1e-6, max_iter=30),
               SolverConfig(method="cg", damping=20.0, rtol=1e-6, max_iter=30, precondition=3),
               SolverConfig(method="neumann", damping=20.0, max_iter=10, lissa_tasks=2, on_failure="warn"),
               SolverConfig(method="lowrank", damping=20.0, rank=3)]
    with torch.device("meta"):
        analyzer = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(solver=solvers[0], chunk=2))
        analyzer.task_influence([0, 1])
        analyzer.val_influence([(0, 1)])
        analyzer.train_influence([(1, 0)])
        analyzer.scores(test)
        analyzer.edit(tasks=[0])
        analyzer.inner_influence([(0, 1)])
        analyzer.removal_gradient(tasks=[1], val=[(0, 0)], train=[(2, 1)])
        for solver in solvers[1:]:
            analyzer.set_solver(solver)
            analyzer.task_influence([2])


def test_training_polishing_and_evaluation_make_nothing_on_the_default_device():
    problem, tasks = PROBLEMS["anil-mlp"][0](), make_taskset(4, 0, 2)
    with torch.device("meta"):
        result = meta_train(problem, tasks, TrainConfig(steps=2, meta_batch=2), progress=False)
        polished = solve_outer(problem, tasks, result.lam.double(), max_iter=2)
        evaluate(problem, polished.lam, tasks, dtype=torch.float64)
    assert result.lam.device.type == "cpu"
