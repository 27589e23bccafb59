"""Total-Hessian-vector products (math.md §4) against re-solved finite differences, in float64."""

import pytest
import torch

from metaif.data import TaskConfig, load_digits, sample_tasks, split_classes
from metaif.influence import finite_difference_hvp, task_states, total_hvp
from metaif.meta import AnilConfig, AnilProblem, ImamlConfig, ImamlProblem, TaskBatch
from metaif.models import mlp


@pytest.fixture(scope="module")
def tasks():
    pool, _ = split_classes(load_digits(), 0.5, seed=0)
    b = TaskBatch.from_taskset(sample_tasks(pool, TaskConfig(ways=3, shots=3, queries=4, num_tasks=3, seed=0)),
                               dtype=torch.float64)
    return [(b.x_tr[i], b.y_tr[i], b.w_tr[i], b.x_val[i], b.y_val[i], b.w_val[i]) for i in range(len(b))]


def make(form):
    if form == "imaml":
        return ImamlProblem(mlp(64, (3,), "tanh"), ImamlConfig(ways=3, delta=2.0, gamma=1e-3, inner_tol=1e-12,
                                                               inner_max_iter=500, cg_rtol=1e-13, cg_max_iter=500))
    return AnilProblem(mlp(64, (6,), "tanh"), AnilConfig(ways=3, head=form, delta=0.3, gamma=1e-3, inner_tol=1e-12))


@pytest.mark.parametrize("form", ["logistic", "ridge", "imaml"])
def test_exact_total_hvp_matches_finite_differences(tasks, form):
    problem = make(form)
    lam = problem.init_lambda(0, torch.float64)
    c = torch.full((len(tasks),), 1.0 / len(tasks), dtype=torch.float64)
    states = task_states(problem, lam, tasks)
    v = torch.randn(lam.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = total_hvp(problem, lam, states, v, c, "exact")
    oracle = finite_difference_hvp(problem, lam, tasks, v, c)
    assert (exact - oracle).norm() <= 1e-6 * oracle.norm()
    w = torch.randn(lam.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert abs(float(w @ exact) - float(v @ total_hvp(problem, lam, states, w, c, "exact"))) <= 1e-9 * exact.norm() * w.norm()

    gn = total_hvp(problem, lam, states, v, c, "gn")
    gamma_term = sum(float(ci) * st.a_l1 for ci, st in zip(c, states))
    torch.testing.assert_close(total_hvp(problem, lam, states, v, c, "gamma"), gn + gamma_term * v)
    assert (gn - exact).norm() > 1e-6 * exact.norm()  # the third-order term is not zero here


def test_direct_variant_holds_theta_fixed(tasks):
    problem = make("logistic")
    lam = problem.init_lambda(0, torch.float64)
    c = torch.full((len(tasks),), 1.0 / len(tasks), dtype=torch.float64)
    states = task_states(problem, lam, tasks)
    v = torch.randn(lam.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def partial_grad(la):
        return problem.gamma * la + sum(ci * torch.func.grad(lambda l: problem.outer_objective(st.theta, l, *st.data[3:]))(la)
                                        for ci, st in zip(c, states))

    h = 1e-5
    oracle = (partial_grad(lam + h * v) - partial_grad(lam - h * v)) / (2 * h)
    direct = total_hvp(problem, lam, states, v, c, "direct")
    assert (direct - oracle).norm() <= 1e-6 * oracle.norm()
    with pytest.raises(ValueError, match="variant must be one of"):
        total_hvp(problem, lam, states, v, c, "bogus")
