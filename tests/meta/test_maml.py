"""Classic MAML (math.md §14(c)) in float64: every derivative of the unrolled map against central
differences of the unrolled objective, the checks of the spec (K = 0, a quadratic loss), and the
meta-gradient of an independent unrolling library (higher)."""

import pytest
import torch
from torch import nn

from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig, finite_difference_hvp
from metaif.meta import MamlConfig, MamlProblem, TaskBatch, Weights, meta_train, total_gradient
from metaif.meta.binding import UnrolledBinding
from metaif.meta.train import TrainConfig
from metaif.meta.unrolled import default_model
from metaif.models import mlp
from tests.helpers import make_taskset, randn, task_tuples

# its module fixtures are built once: every test of the file on one xdist worker
pytestmark = pytest.mark.xdist_group("test_maml")

SOLVE = InfluenceConfig(solver=SolverConfig(method="dense", damping=50.0))


def maml(k: int, meta_sgd: bool = False, loss: str = "softmax", hidden=(5,), activation="tanh") -> MamlProblem:
    outputs = 1 if loss == "squared" else 3
    return MamlProblem(default_model(mlp(64, hidden, activation), outputs),
                       MamlConfig(ways=outputs, loss=loss, inner_steps=k, inner_lr=0.5, meta_sgd=meta_sgd, gamma=1e-3))


@pytest.fixture(scope="module")
def tasks():
    return make_taskset(4, seed=1)


def unit(n, seed):
    v = randn(n, seed)
    return v / v.norm()


@pytest.mark.parametrize("k, meta_sgd", [(1, False), (5, False), (3, True)])
def test_total_gradient_and_hvp_match_central_differences(tasks, k, meta_sgd):
    problem = maml(k, meta_sgd)
    lam = problem.init_lambda(0, torch.float64)
    an = InfluenceAnalyzer(problem, lam, tasks, config=SOLVE)
    assert isinstance(an.binding, UnrolledBinding)
    data = task_tuples(tasks)
    v = unit(lam.numel(), 2)

    def objective(la):
        return sum(float(c) * problem.outer_objective(problem.adapt(la, *d[:3]), la, *d[3:]) for c, d in zip(an.c, data))

    h = 1e-5
    fd = (objective(lam + h * v) - objective(lam - h * v)) / (2 * h)
    g = an.gradient(an.c)
    assert abs(float(g @ v) - float(fd)) <= 1e-7 * g.norm()
    for i, d in enumerate(data):  # per task: the gradient through the steps
        torch.testing.assert_close(an.task_gradients([i])[0], total_gradient(problem, lam, *d))
    oracle = finite_difference_hvp(problem, lam, data, v, an.c, h=h)
    assert (an.hvp(v) - oracle).norm() <= 1e-6 * oracle.norm()
    block = torch.stack([v, unit(lam.numel(), 3)])
    torch.testing.assert_close(an.hvp(block)[0], an.hvp(v))


def test_a_loop_over_tasks_equals_the_vmapped_computation(tasks):
    """vectorize="off" (what convolutional models on the CPU use) gives the same numbers."""
    on, off = (MamlProblem(maml(3).model, MamlConfig(ways=3, inner_steps=3, inner_lr=0.5, gamma=1e-3, vectorize=mode))
               for mode in ("on", "off"))
    lam = on.init_lambda(0, torch.float64)
    config = InfluenceConfig(solver=SolverConfig(method="dense", damping=500.0))
    a, b = (InfluenceAnalyzer(p, lam, tasks, config=config) for p in (on, off))
    v = unit(lam.numel(), 8)
    for variant in ("exact", "gn"):
        torch.testing.assert_close(a.hvp(v, variant), b.hvp(v, variant))
    test = make_taskset(2, seed=9)
    sa, sb = a.scores(test), b.scores(test)
    for x, y in ((sa.tasks, sb.tasks), (sa.val, sb.val), (sa.train, sb.train)):
        torch.testing.assert_close(x, y)
    batch, c = TaskBatch.from_taskset(tasks, dtype=torch.float64), Weights.uniform(tasks, torch.float64).c
    torch.testing.assert_close(on.outer_gradient(lam, batch, c)[0], off.outer_gradient(lam, batch, c)[0])


def test_instance_derivatives_match_central_differences_in_the_weights(tasks):
    problem = maml(3)
    lam = problem.init_lambda(0, torch.float64)
    an = InfluenceAnalyzer(problem, lam, tasks, config=SOLVE)
    k, j, eps = 2, 4, 1e-5
    x_tr, y_tr, w_tr, x_val, y_val, w_val = task_tuples(tasks)[k]

    def bumped(i):
        w = w_tr.clone()
        w[j] += i * eps
        return w

    # inner-IF: d theta / d w_kj by the tangent recursion
    fd_theta = (problem.adapt(lam, x_tr, y_tr, bumped(1)) - problem.adapt(lam, x_tr, y_tr, bumped(-1))) / (2 * eps)
    assert (an.inner_influence([(k, j)])[0] - fd_theta).norm() <= 1e-6 * fd_theta.norm()
    # training instance: train_gradients = -d g_k / d w_kj (the argmin forms' sign)
    plus = total_gradient(problem, lam, x_tr, y_tr, bumped(1), x_val, y_val, w_val)
    minus = total_gradient(problem, lam, x_tr, y_tr, bumped(-1), x_val, y_val, w_val)
    fd = -(plus - minus) / (2 * eps)
    assert (an.train_gradients([(k, j)])[0] - fd).norm() <= 1e-6 * fd.norm()
    # loss difference: -w dL/dw
    loss = [problem.outer_objective(problem.adapt(lam, x_tr, y_tr, bumped(i)), lam, x_val, y_val, w_val) for i in (1, -1)]
    assert float(an.loss_difference([(k, j)])[0]) == pytest.approx(float(-w_tr[j] * (loss[0] - loss[1]) / (2 * eps)),
                                                                  rel=1e-6)
    # validation instance: the gradient of that point's loss alone
    onehot = torch.zeros_like(w_val)
    onehot[1] = 1.0
    torch.testing.assert_close(an.val_gradients([(k, 1)])[0],
                               total_gradient(problem, lam, x_tr, y_tr, w_tr, x_val, y_val, onehot))


def test_scores_are_projections_of_the_removal_predictions(tasks):
    problem = maml(2)
    an = InfluenceAnalyzer(problem, problem.init_lambda(0, torch.float64), tasks,
                           config=InfluenceConfig(solver=SolverConfig(method="dense", damping=500.0)))
    test = make_taskset(3, seed=7)
    df = an.test_gradient(test)
    s = an.scores(test)
    torch.testing.assert_close(s.tasks, an.task_influence() @ df)
    items = [(0, 1), (3, 4)]
    torch.testing.assert_close(torch.stack([s.val[k, j] for k, j in items]), an.val_influence(items) @ df)
    torch.testing.assert_close(torch.stack([s.train[k, j] for k, j in items]), an.train_influence(items) @ df)
    with pytest.warns(UserWarning, match="identically 0"):
        assert float(an.direct_influence([0]).abs().sum()) == 0.0  # b_i = 0: lambda enters L only through theta


def test_zero_steps_is_m_estimation_and_a_quadratic_loss_makes_exact_equal_gn(tasks):
    """K = 0: theta = lambda, the total Hessian is the validation loss's Hessian; for a linear model
    with squared loss the map is affine, so exact = GN (math.md §14(c)'s checks)."""
    problem = maml(0)
    lam = problem.init_lambda(0, torch.float64)
    an = InfluenceAnalyzer(problem, lam, tasks)
    v = unit(lam.numel(), 5)
    data = task_tuples(tasks)
    hess = sum(float(c) * torch.func.hessian(lambda la: problem.data_loss(la, *d[3:]))(lam) for c, d in zip(an.c, data))
    torch.testing.assert_close(an.hvp(v), hess @ v + problem.gamma * v)
    regression = [(x, y.double(), w, xv, yv.double(), wv) for x, y, w, xv, yv, wv in data]
    linear = MamlProblem(default_model(mlp(64, ()), 1), MamlConfig(loss="squared", inner_steps=3, inner_lr=0.1))
    lam = linear.init_lambda(0, torch.float64)
    from metaif.data import TaskSet
    real = TaskSet.from_tensors(torch.stack([d[0] for d in regression]), torch.stack([d[1] for d in regression]),
                                torch.stack([d[3] for d in regression]), torch.stack([d[4] for d in regression]))
    an = InfluenceAnalyzer(linear, lam, real)
    v = unit(lam.numel(), 6)
    torch.testing.assert_close(an.hvp(v), an.hvp(v, "gn"))


def test_meta_gradient_equals_that_of_an_independent_unrolling_library(tasks):
    """higher (test-only dependency) differentiates through K torch.optim.SGD steps of a module."""
    higher = pytest.importorskip("higher")
    k, alpha = 3, 0.5
    problem = maml(k)
    lam = problem.init_lambda(0, torch.float64)
    net = problem.model.module.double()
    with torch.no_grad():
        for param, value in zip(net.parameters(), problem.model.unflatten(lam).values()):
            param.copy_(value)
    x_tr, y_tr, _, x_val, y_val, _ = task_tuples(tasks)[0]
    with higher.innerloop_ctx(net, torch.optim.SGD(net.parameters(), lr=alpha), copy_initial_weights=False) as (f, opt):
        for _ in range(k):
            opt.step(nn.functional.cross_entropy(f(x_tr), y_tr))
        meta = torch.autograd.grad(nn.functional.cross_entropy(f(x_val), y_val), list(net.parameters()))
    theirs = torch.cat([g.flatten() for g in meta])
    ours = InfluenceAnalyzer(problem, lam, tasks).task_gradients([0])[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_training_exact_and_first_order(tasks):
    """Adam on the exact gradient lowers the objective; first-order MAML trains too, but its update
    is not the exact gradient."""
    batch = TaskBatch.from_taskset(tasks, dtype=torch.float64)
    c = Weights.uniform(tasks, torch.float64).c
    exact, first = maml(2), MamlProblem(maml(2).model, MamlConfig(ways=3, inner_steps=2, inner_lr=0.5,
                                                                  first_order=True))
    lam = exact.init_lambda(0, torch.float64)
    g_exact = exact.training_gradient(lam, batch, c)[0]
    g_first = first.training_gradient(lam, batch, c)[0]
    torch.testing.assert_close(first.outer_gradient(lam, batch, c)[0], g_exact)  # analysis: always exact
    assert (g_first - g_exact).norm() > 1e-3 * g_exact.norm()
    config = TrainConfig(steps=15, meta_batch=0, lr=1e-2, dtype="float64")
    before = exact.outer_gradient(lam, batch, c)[1]["outer_loss"]
    for problem in (exact, first):
        trained = meta_train(problem, tasks, config, progress=False).lam
        assert problem.outer_gradient(trained, batch, c)[1]["outer_loss"] < before
    with pytest.raises(ValueError, match="first_order must be False with meta_sgd"):
        MamlConfig(first_order=True, meta_sgd=True)


def test_ways_is_optional_and_checked_against_the_model_when_given():
    """Real-valued targets need no class count; a given one must match the model's outputs."""
    assert MamlConfig(loss="squared").ways is None
    MamlProblem(default_model(mlp(64, ()), 3), MamlConfig(ways=3))
    with pytest.raises(ValueError, match="MamlConfig.ways is 5, so the softmax loss needs 5 model outputs, but the "
                                         "model has 3"):
        MamlProblem(default_model(mlp(64, ()), 3), MamlConfig(ways=5))
    with pytest.raises(ValueError, match="MamlConfig.ways must be None or an integer >= 1"):
        MamlConfig(ways=0)
