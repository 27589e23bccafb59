"""Problems users write themselves on the seam: a body-plus-head problem declared in a few lines
gets the unique-input path and equals the built-in ANIL; plain per-task tensors with real-valued
targets; the built-in forms with other losses (float64)."""

import pytest
import torch

from metaif.data import TaskSet
from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig, finite_difference_hvp
from metaif.meta import (
    AnilConfig,
    AnilProblem,
    FeatureHeadProblem,
    HeadCurvature,
    ImamlConfig,
    ImamlProblem,
    Weights,
)
from metaif.meta.binding import BodyBinding
from metaif.meta.problem import HeadSolveSettings
from metaif.meta.train import outer_gradient
from metaif.models import mlp
from tests.helpers import make_taskset, randn, task_tuples


class SoftmaxHead:
    """A shared body with a softmax head and an L2 term on it, written from scratch."""

    def __init__(self, body, ways, delta, gamma):
        self.body, self.ways, self.delta, self.gamma = body, ways, delta, gamma
        self.theta_dim = ways * (body.out_features + 1)

    def head_outer_objective(self, theta, phi, y, w):
        phi = torch.cat([phi, torch.ones_like(phi[..., :1])], -1)
        logits = phi @ theta.view(len(theta), self.ways, -1).mT
        return (w * (torch.logsumexp(logits, -1) - logits.gather(-1, y[..., None])[..., 0])).sum(-1)

    def head_inner_objective(self, theta, phi, y, w):
        return self.head_outer_objective(theta, phi, y, w) + self.delta / 2 * theta.pow(2).sum(-1)


@pytest.mark.slow
def test_a_user_body_and_head_problem_equals_the_built_in_anil():
    tasks = make_taskset(6, seed=2)
    body = mlp(64, (5,), "tanh")
    mine, builtin = SoftmaxHead(body, 3, 0.3, 1e-3), AnilProblem(body, AnilConfig(ways=3, delta=0.3, gamma=1e-3,
                                                                                   inner_tol=1e-12))
    assert isinstance(mine, FeatureHeadProblem) and not isinstance(mine, HeadCurvature)
    lam = body.init(0, torch.float64)
    config = InfluenceConfig(solver=SolverConfig(method="dense", damping=2.0))
    a, b = (InfluenceAnalyzer(p, lam, tasks, config=config) for p in (mine, builtin))
    assert isinstance(a.binding, BodyBinding)  # the unique-input path, chosen by declaration
    torch.testing.assert_close(a.binding.theta, b.binding.theta)
    v = randn(lam.numel(), 1)
    for variant in ("exact", "gn", "direct"):
        torch.testing.assert_close(a.hvp(v, variant), b.hvp(v, variant))
    torch.testing.assert_close(a.task_influence(), b.task_influence())
    items = [(0, 2), (5, 1)]
    torch.testing.assert_close(a.train_influence(items), b.train_influence(items))
    test = make_taskset(3, seed=9)
    sa, sb = a.scores(test), b.scores(test)
    for x, y in ((sa.tasks, sb.tasks), (sa.val, sb.val), (sa.train, sb.train)):
        torch.testing.assert_close(x, y)
    from metaif.meta import TaskBatch
    batch = TaskBatch.from_taskset(tasks, dtype=torch.float64)
    c = Weights.uniform(tasks, torch.float64).c
    torch.testing.assert_close(outer_gradient(mine, lam, batch, c)[0], outer_gradient(builtin, lam, batch, c)[0])


def test_a_user_head_declares_where_its_solve_stops():
    """HeadSolveSettings is read by declaration: one Newton step leaves the heads short of
    stationarity, the default steps reach it."""
    tasks = make_taskset(3, seed=2)
    body = mlp(64, (5,), "tanh")
    lam = body.init(0, torch.float64)

    class OneStep(SoftmaxHead):
        inner_tol, inner_max_iter = 1e-12, 1

    short, default = OneStep(body, 3, 0.3, 1e-3), SoftmaxHead(body, 3, 0.3, 1e-3)
    assert isinstance(short, HeadSolveSettings) and not isinstance(default, HeadSolveSettings)
    norms = [float(InfluenceAnalyzer(p, lam, tasks).binding.inner_norm.max()) for p in (short, default)]
    assert norms[0] > 1e-4 and norms[1] < 1e-9, norms


def test_plain_tensors_with_real_valued_targets():
    """A ridge head on real-valued targets, the tasks given as plain tensors."""
    gen = torch.Generator().manual_seed(0)
    x_tr, x_val = torch.randn(4, 6, 3, generator=gen, dtype=torch.float64), torch.randn(4, 5, 3, generator=gen,
                                                                                       dtype=torch.float64)
    y_tr, y_val = x_tr.sum(-1).sin(), x_val.sum(-1).sin()
    tasks = TaskSet.from_tensors(x_tr, y_tr, x_val, y_val)
    problem = AnilProblem(mlp(3, (4,), "tanh"), AnilConfig(ways=1, loss="squared", delta=0.5, gamma=1e-2))
    lam = problem.init_lambda(0, torch.float64)
    an = InfluenceAnalyzer(problem, lam, tasks)
    v = randn(lam.numel(), 2)
    oracle = finite_difference_hvp(problem, lam, task_tuples(tasks), v, an.c)
    assert (an.hvp(v) - oracle).norm() <= 1e-6 * oracle.norm()


def test_binary_logistic_and_squared_imaml_match_finite_differences():
    tasks = make_taskset(3, seed=4)
    binary = tasks.subset([0, 1, 2])
    binary = TaskSet.from_tensors(binary.x_train[:, :6], (binary.y_train[:, :6] > 0).long(), binary.x_val[:, :8],
                                  (binary.y_val[:, :8] > 0).long())
    for problem, data in ((AnilProblem(mlp(64, (5,), "tanh"), AnilConfig(ways=2, loss="binary", delta=0.3,
                                                                          inner_tol=1e-12)), binary),
                          (ImamlProblem(mlp(64, (3,), "tanh"), ImamlConfig(ways=3, loss="squared", delta=2.0,
                                                                           inner_tol=1e-12, inner_max_iter=500)),
                           tasks)):
        lam = problem.init_lambda(0, torch.float64)
        an = InfluenceAnalyzer(problem, lam, data)
        v = randn(lam.numel(), 3)
        oracle = finite_difference_hvp(problem, lam, task_tuples(data), v, an.c)
        assert (an.hvp(v) - oracle).norm() <= 1e-6 * oracle.norm()
