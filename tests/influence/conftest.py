"""Small float64 bilevel problems on digits for the influence tests."""

import pytest
import torch

from metaif.data import TaskConfig, load_digits, sample_tasks, split_classes
from metaif.meta import AnilConfig, AnilProblem, ImamlConfig, ImamlProblem, TaskBatch
from metaif.models import mlp


def make_taskset(num_tasks: int, seed: int = 0, queries: int = 4):
    pool, _ = split_classes(load_digits(), 0.5, seed=0)
    return sample_tasks(pool, TaskConfig(ways=3, shots=3, queries=queries, num_tasks=num_tasks, seed=seed))


def task_tuples(tasks, w_tr=None, w_val=None):
    b = TaskBatch.from_taskset(tasks, dtype=torch.float64, w_tr=w_tr, w_val=w_val)
    return [(b.x_tr[i], b.y_tr[i], b.w_tr[i], b.x_val[i], b.y_val[i], b.w_val[i]) for i in range(len(b))]


def make_problem(form: str, gamma: float = 1e-3):
    if form == "imaml":
        return ImamlProblem(mlp(64, (3,), "tanh"), ImamlConfig(ways=3, delta=2.0, gamma=gamma, inner_tol=1e-12,
                                                               inner_max_iter=500, cg_rtol=1e-13, cg_max_iter=500))
    return AnilProblem(mlp(64, (6,), "tanh"), AnilConfig(ways=3, head=form, delta=0.3, gamma=gamma, inner_tol=1e-12))


@pytest.fixture(scope="package")
def small_tasks():
    return make_taskset(3)
