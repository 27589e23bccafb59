"""Influence estimates against actual re-solving (math.md §16), on small float64 ANIL problems
solved to stationarity by full-batch L-BFGS."""

import itertools

import pytest
import torch

from metaif.experiments.loo import leave_one_out, random_directions, spearman
from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig
from metaif.linalg import MetaifWarning
from metaif.meta import Weights, full_objective, solve_outer
from tests.helpers import make_problem, make_taskset

pytestmark = pytest.mark.slow  # every test re-solves the meta-problem (tens of seconds)

SOLVER = InfluenceConfig(solver=SolverConfig(method="cg", rtol=1e-10, max_iter=1000))


@pytest.fixture(scope="module", params=["ridge", "logistic"])
def trained(request):
    tasks = make_taskset(30, seed=3, queries=5)
    problem = make_problem(request.param, gamma=0.01)
    result = solve_outer(problem, tasks, problem.init_lambda(0, torch.float64), tol=1e-11, max_iter=3000)
    analyzer = InfluenceAnalyzer(problem, result.lam, tasks, config=SOLVER)
    assert analyzer.diagnostics["total_grad_norm"] < 1e-8
    return analyzer


def test_spearman_is_a_rank_correlation():
    x = torch.tensor([0.1, 0.5, 0.3, 2.0])
    assert spearman(x, x.exp()) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)


def test_task_and_instance_if_rank_items_like_re_solving(trained):
    d = random_directions(trained.lam.numel(), 2, seed=1)
    # re-solved to max |D_lambda L| <= 1e-8: a removal moves lambda* by ~1e-3, far above that error
    tasks = leave_one_out(trained, "tasks", list(range(30)), d, tol=1e-8)
    assert min(tasks.spearman) >= 0.95, tasks.summary()
    direct = trained.direct_influence() @ d.T
    direct_rho = [spearman(direct[:, k], tasks.actual[k]) for k in range(2)]
    assert max(direct_rho) < min(tasks.spearman) - 0.05  # the direct IF misses theta(lambda)
    val = leave_one_out(trained, "val", [(k, j) for k in range(0, 30, 5) for j in (0, 7)], d, tol=1e-8)
    assert min(val.spearman) >= 0.95, val.summary()
    train = leave_one_out(trained, "train", [(k, j) for k in range(0, 30, 5) for j in (0, 4)], d, tol=1e-8)
    assert min(train.spearman) >= 0.9, train.summary()


def test_each_if_is_the_derivative_of_the_re_solved_optimum(trained):
    """Central differences of lambda*(w_X ± eps) against -IF_X = Δλ_X / w_X for a task, a
    validation instance and a training instance."""
    if trained.problem.config.loss != "squared":
        pytest.skip("one head is enough for the derivative check")
    eps, tasks = 1e-3, trained.tasks  # L-BFGS stalls near ||grad|| ~ 1e-9: error O(eps^2) + O(1e-9 / eps)
    base = Weights.uniform(tasks, torch.float64)

    def resolve(weights):
        return solve_outer(trained.problem, tasks, trained.lam, weights, tol=1e-13, max_iter=5000).lam

    cases = [("task", lambda w, s: w.c.__setitem__(4, w.c[4] + s), trained.task_influence([4])[0] / base.c[4]),
             ("val", lambda w, s: w.w_val.__setitem__((6, 3), w.w_val[6, 3] + s),
              trained.val_influence([(6, 3)])[0] / (base.c[6] * base.w_val[6, 3])),
             ("train", lambda w, s: w.w_tr.__setitem__((9, 2), w.w_tr[9, 2] + s),
              trained.train_influence([(9, 2)])[0] / base.w_tr[9, 2])]
    for name, bump, predicted in cases:
        plus, minus = Weights.uniform(tasks, torch.float64), Weights.uniform(tasks, torch.float64)
        bump(plus, eps)
        bump(minus, -eps)
        derivative = (resolve(plus) - resolve(minus)) / (2 * eps)
        if name == "val":  # a validation weight enters L as c_k w_kj (math.md §1)
            derivative = derivative / base.c[6]
        # Δλ_X = -w_X IF_X, so Δλ_X / w_X = -dλ*/dw_X
        assert (predicted + derivative).norm() <= 1e-3 * derivative.norm(), name


def test_classic_maml_influence_ranks_items_like_re_solving():
    """Classic MAML (K = 2 steps) on a linear softmax model: the unrolled objective polished to
    stationarity by L-BFGS, every task and sampled instances re-solved without them."""
    tasks = make_taskset(30, seed=3, queries=5)
    problem = make_problem("maml")
    lam = solve_outer(problem, tasks, problem.init_lambda(0, torch.float64), tol=1e-12, max_iter=3000).lam
    analyzer = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(solver=SolverConfig(method="dense")))
    assert analyzer.diagnostics["total_grad_norm"] < 1e-7
    d = random_directions(lam.numel(), 2, seed=1)
    for kind, items, target in (("tasks", list(range(30)), 0.95),
                                ("val", [(k, j) for k in range(0, 30, 5) for j in (0, 7)], 0.95),
                                ("train", [(k, j) for k in range(0, 30, 5) for j in (0, 4)], 0.9)):
        result = leave_one_out(analyzer, kind, items, d, tol=1e-11)
        assert min(result.spearman) >= target, result.summary()


def test_newton_refinement_converges_to_the_re_solved_optimum(trained):
    """Removing a fifth of the tasks and whole support sets is far from first order: the edit misses
    the re-solved optimum, and each ``refine`` step (inner problems re-solved, H kept from λ*)
    closes most of the remaining gap."""
    tasks = trained.tasks
    removal = {"tasks": list(range(0, 30, 5)), "train": [(k, j) for k in (1, 2, 3) for j in range(4)],
               "val": [(7, j) for j in range(6)]}
    retrained = solve_outer(trained.problem, tasks, trained.lam,
                            Weights.uniform(tasks, torch.float64).without_positions(**removal),
                            tol=1e-11, max_iter=3000).lam
    iterates = list(itertools.islice(trained.newton_steps(trained.edit(**removal), **removal), 4))
    errors = [float((lam - retrained).norm()) for lam in iterates]
    assert errors[0] > 1e-3 * float((retrained - trained.lam).norm()), errors  # first order is measurably off
    # linear convergence: H is kept from λ*, so each step removes a fixed share of the gap
    assert all(b < 0.5 * a for a, b in zip(errors, errors[1:])) and errors[-1] < 0.05 * errors[0], errors
    torch.testing.assert_close(trained.edit(**removal, refine=2), iterates[2])
    with pytest.raises(ValueError, match="refine must be an integer >= 0"):
        trained.edit(tasks=[0], refine=-1)


def test_newton_refinement_never_climbs(trained, monkeypatch):
    """Steps 30 times too long are halved until the objective without the removed items falls; an
    ascent direction ends the refinement with a warning at the last iterate."""
    removal = {"tasks": list(range(0, 30, 3))}
    weights = Weights.uniform(trained.tasks, torch.float64).without_positions(**removal)
    with monkeypatch.context() as patched:
        patched.setattr(trained.session, "bind", lambda *a, **k: pytest.fail("edit(refine=0) re-solved the inner problems"))
        trained.edit(**removal)
    solve = trained.hessian.solve
    monkeypatch.setattr(trained.hessian, "solve", lambda b, variant=None: 30 * solve(b, variant))
    iterates = list(itertools.islice(trained.newton_steps(trained.lam, **removal), 4))
    values = [full_objective(trained.problem, trained.tasks, lam, weights)[0] for lam in iterates]
    assert len(values) == 4 and all(b < a for a, b in zip(values, values[1:])), values
    monkeypatch.setattr(trained.hessian, "solve", lambda b, variant=None: -solve(b, variant))
    trained.editor.forget()
    with pytest.warns(MetaifWarning, match="Newton refinement stopped"):
        torch.testing.assert_close(trained.edit(**removal, refine=2), trained.edit(**removal))
