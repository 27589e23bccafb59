"""The analyzer's influence quantities against independent references (float64)."""

import warnings

import pytest
import torch
from torch.func import grad, hessian

from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig, SolverError
from metaif.linalg import MetaifWarning
from metaif.meta import FeatureHead, Weights, bilevel, total_gradient
from metaif.meta.binding import Binding, BodyBinding, SeamBinding, UnrolledBinding
from tests.helpers import make_problem, make_taskset, randn, task_tuples

# its module fixtures are built once: every test of the file on one xdist worker
pytestmark = pytest.mark.xdist_group("test_influence")


@pytest.fixture(scope="module")
def tasks():
    return make_taskset(5, seed=1)


def weights(tasks):
    """Non-uniform weights with one removed task and one removed instance of each split."""
    w = Weights.uniform(tasks, torch.float64)
    gen = torch.Generator().manual_seed(0)
    w.w_tr *= 0.5 + torch.rand(w.w_tr.shape, generator=gen, dtype=torch.float64)
    w.w_val *= 0.5 + torch.rand(w.w_val.shape, generator=gen, dtype=torch.float64)
    w.c[1] = 0.0
    w.w_tr[2, 0] = 0.0
    w.w_val[3, 1] = 0.0
    return w


ITERATIVE = InfluenceConfig(solver=SolverConfig(method="cg", damping=1.5, rtol=1e-12, max_iter=500))


@pytest.fixture(scope="module")
def pair(tasks):
    """The unique-image body binding and the generic seam binding on the same ANIL problem."""
    problem = make_problem("logistic")
    lam = problem.init_lambda(0, torch.float64)
    w = weights(tasks)
    fast = InfluenceAnalyzer(problem, lam, tasks, weights=w, config=InfluenceConfig(chunk=2, image_chunk=7))
    seam = InfluenceAnalyzer(problem, lam, tasks, weights=w, config=InfluenceConfig(path="seam"))
    return fast, seam


def test_unique_image_path_equals_per_task_path(pair):
    fast, seam = pair
    assert fast.binding.num_inputs < fast.tasks.x_train.shape[0] * (fast.tasks.x_train.shape[1] + fast.tasks.x_val.shape[1])
    v = randn(fast.lam.numel(), 1)
    for variant in ("exact", "gn", "gamma", "direct"):
        torch.testing.assert_close(fast.hvp(v, variant), seam.hvp(v, variant))
    torch.testing.assert_close(fast.task_gradients(), seam.task_gradients())
    torch.testing.assert_close(fast.task_gradients(direct=True), seam.task_gradients(direct=True))
    items = [(0, 1), (2, 0), (4, 3)]
    torch.testing.assert_close(fast.val_gradients(items), seam.val_gradients(items))
    torch.testing.assert_close(fast.train_gradients(items), seam.train_gradients(items))
    a, b = fast.directional(v), seam.directional(v)
    for x, y in ((a.tasks, b.tasks), (a.val, b.val), (a.train, b.train)):
        torch.testing.assert_close(x, y)


def test_gradients_match_the_seam_oracle(pair, tasks):
    """g_k and D_lambda l(z') against meta.total_gradient (dense, independent code); the training
    instance quantity against central differences of g_k in the instance weight (re-solved theta)."""
    fast, _ = pair
    problem, lam, data = fast.problem, fast.lam, task_tuples(tasks, fast.weights.w_tr, fast.weights.w_val)
    g = fast.task_gradients()
    for k in range(len(tasks)):
        torch.testing.assert_close(g[k], total_gradient(problem, lam, *data[k]))
    k, j = 4, 2
    onehot = torch.zeros_like(data[k][5])
    onehot[j] = 1.0
    torch.testing.assert_close(fast.val_gradients([(k, j)])[0], total_gradient(problem, lam, *data[k][:5], onehot))
    eps = 1e-5
    bump = torch.zeros_like(data[k][2])
    bump[j] = eps
    plus = total_gradient(problem, lam, data[k][0], data[k][1], data[k][2] + bump, *data[k][3:])
    minus = total_gradient(problem, lam, data[k][0], data[k][1], data[k][2] - bump, *data[k][3:])
    fd = -(plus - minus) / (2 * eps)  # d g_k / d w_tr = -D_lambda[a^T H^{-1} grad l(z)] (math.md §10)
    got = fast.train_gradients([(k, j)])[0]
    assert (got - fd).norm() <= 1e-6 * fd.norm()


@pytest.mark.slow
def test_scores_are_one_solve_projections_of_the_explicit_predictions(pair, tasks):
    fast, _ = pair
    fast = InfluenceAnalyzer(fast.problem, fast.lam, tasks, weights=fast.weights, config=ITERATIVE)
    test = make_taskset(4, seed=7)
    df = fast.test_gradient(test)
    s = fast.scores(test)
    torch.testing.assert_close(s.tasks, fast.task_influence() @ df)
    items = [(0, 1), (2, 3), (4, 0)]
    torch.testing.assert_close(torch.stack([s.val[k, j] for k, j in items]), fast.val_influence(items) @ df)
    torch.testing.assert_close(torch.stack([s.train[k, j] for k, j in items]), fast.train_influence(items) @ df)
    assert float(s.tasks[1]) == 0.0 and float(s.train[2, 0]) == 0.0 and float(s.val[3, 1]) == 0.0
    partial = fast.scores(test, partial=True)
    assert not torch.allclose(partial.tasks, s.tasks)


def test_edit_is_additive(pair, tasks):
    fast, _ = pair
    an = InfluenceAnalyzer(fast.problem, fast.lam, tasks, weights=fast.weights, config=ITERATIVE)
    lam_hat = an.edit(tasks=[0, 3], val=[(2, 1)], train=[(4, 2)])
    expected = (an.lam + an.task_influence([0, 3]).sum(0) + an.val_influence([(2, 1)])[0]
                + an.train_influence([(4, 2)])[0])
    torch.testing.assert_close(lam_hat, expected)
    direct = an.edit(tasks=[0, 3], val=[(2, 1)], method="direct")
    torch.testing.assert_close(direct, an.lam + an.direct_influence([0, 3]).sum(0) + an.direct_val_influence([(2, 1)])[0])
    with pytest.raises(ValueError, match="no training instances"):
        an.edit(train=[(0, 0)], method="direct")
    with pytest.raises(ValueError, match="variant 'direct' is the direct-IF baseline"):
        an.task_influence(variant="direct")


def test_an_edit_that_empties_a_support_class_says_it_is_far_from_first_order(pair):
    """3-way 3-shot, class-major: a task's first three support examples are its class 0; task 2's
    first one already has weight 0."""
    an = InfluenceAnalyzer(pair[0].problem, pair[0].lam, pair[0].tasks, weights=pair[0].weights, config=ITERATIVE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        an.edit(train=[(0, 0), (0, 1), (2, 1)])
    for emptied, touched in (([(0, 0), (0, 1), (0, 2)], 1), ([(2, 1), (2, 2), (4, 0)], 2)):
        with pytest.warns(MetaifWarning, match=f"last support example of a class in 1 of the {touched} tasks"):
            an.edit(train=emptied)


def test_the_analyzer_solves_with_its_total_hessian(pair):
    fast, _ = pair
    an = InfluenceAnalyzer(fast.problem, fast.lam, fast.tasks, weights=fast.weights, config=ITERATIVE)
    b = randn(fast.lam.numel(), 9)[None]
    x = an.solve(b)[0]
    residual = an.hvp(x) + 1.5 * x - b[0]
    assert residual.norm() <= 1e-9 * b.norm()
    assert an.last_solve.converged and float(an.last_solve.residual[0]) <= 1e-12 and an.damping_used == 1.5


@pytest.mark.slow
def test_indefinite_hessian_and_bad_input_raise_clear_errors(pair):
    fast, _ = pair
    gn = InfluenceAnalyzer(fast.problem, fast.lam, fast.tasks, weights=fast.weights,
                           config=InfluenceConfig(variant="gn", solver=SolverConfig(method="lowrank", rank=30)))
    with pytest.raises(SolverError, match="not positive definite"):
        gn.solver()
    retried = InfluenceAnalyzer(fast.problem, fast.lam, fast.tasks, weights=fast.weights, config=InfluenceConfig(
        variant="gn", solver=SolverConfig(method="lowrank", rank=30, damping=1e-3, retries=4)))
    with pytest.warns(UserWarning, match="Retrying with damping 0.01"):
        retried.solve(randn(fast.lam.numel(), 3)[None])
    assert retried.damping_used > 1e-3
    minres = InfluenceAnalyzer(fast.problem, fast.lam, fast.tasks, weights=fast.weights, config=InfluenceConfig(
        variant="gn", solver=SolverConfig(method="minres", rtol=1e-10, max_iter=2000)))
    b = randn(fast.lam.numel(), 4)[None]
    x = minres.solve(b)[0]
    assert (minres.hvp(x, "gn") - b[0]).norm() <= 1e-8 * b.norm()
    with pytest.raises(ValueError, match="flat parameter vector"):
        InfluenceAnalyzer(fast.problem, fast.lam[None], fast.tasks)
    with pytest.raises(ValueError, match="NaN"):
        InfluenceAnalyzer(fast.problem, fast.lam * float("nan"), fast.tasks)
    with pytest.raises(ValueError, match="InfluenceConfig.variant must be one of"):
        InfluenceConfig(variant="third")
    with pytest.raises(ValueError, match=r"\[k, 390\]"):
        fast.solve(torch.zeros(3))
    with pytest.raises(ValueError, match=r"out of range; positions lie in \[0, 5\)"):
        fast.val_influence([(-1, 0)])
    with pytest.raises(ValueError, match=r"out of range; task positions"):
        fast.task_influence([5])


def test_imaml_direct_if_is_degenerate_and_first_order_baselines_follow_their_formula(small_tasks):
    """iMAML's direct IF is 0; the J := I baselines (math.md §6) are ``c_k (gamma I + sum_i c_i
    grad^2_theta L_i + mu I)^{-1}`` of ``grad_theta L_k`` (tasks) and ``w_kj grad_theta l(z'_kj)``
    (validation instances), built here from dense autograd Hessians."""
    problem = make_problem("imaml", gamma=0.05)
    an = InfluenceAnalyzer(problem, problem.init_lambda(0, torch.float64), small_tasks,
                           config=InfluenceConfig(solver=SolverConfig(damping=1.0, rtol=1e-12, max_iter=500)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert float(an.direct_influence().abs().sum()) == 0.0
    assert any("identically 0" in str(w.message) for w in caught)
    seam, lam, theta = bilevel(problem), an.lam, an.binding.theta
    data = task_tuples(small_tasks, an.weights.w_tr, an.weights.w_val)
    curvature = (problem.gamma + 1.0) * torch.eye(lam.numel(), dtype=torch.float64)
    for i, (*_, x_val, y_val, w_val) in enumerate(data):
        curvature += an.c[i] * hessian(lambda th: seam.outer_objective(th, lam, x_val, y_val, w_val))(theta[i])

    def outer_grad(k: int, w: torch.Tensor) -> torch.Tensor:
        x_val, y_val = data[k][3], data[k][4]
        return grad(lambda th: seam.outer_objective(th, lam, x_val, y_val, w))(theta[k])

    tasks_expected = torch.stack([an.c[k] * torch.linalg.solve(curvature, outer_grad(k, data[k][5]))
                                  for k in range(len(data))])
    torch.testing.assert_close(an.first_order_influence(), tasks_expected)
    items = [(0, 1), (2, 3)]
    val_expected = torch.stack([an.c[k] * an.weights.w_val[k, j] * torch.linalg.solve(
        curvature, outer_grad(k, torch.nn.functional.one_hot(torch.tensor(j), len(data[k][5])).double()))
        for k, j in items])
    torch.testing.assert_close(an.first_order_val_influence(items), val_expected)
    # the dense solver feeds the seam views of its identity as directions: it must agree with CG
    dense = InfluenceAnalyzer(problem, an.lam, small_tasks, config=InfluenceConfig(
        solver=SolverConfig(method="dense", damping=1.0)))
    exact, iterative = dense.task_influence(), an.task_influence()
    assert float((exact - iterative).norm() / exact.norm()) < 1e-5
    ridge = InfluenceAnalyzer(make_problem("ridge"), make_problem("ridge").init_lambda(0, torch.float64), small_tasks)
    for baseline in (lambda: ridge.first_order_influence(), lambda: ridge.first_order_val_influence([(0, 0)])):
        with pytest.raises(ValueError, match="same space"):
            baseline()


def test_every_binding_declares_the_binding_protocol(pair, small_tasks):
    """The analyzer reaches every binding through the declared Protocol, nothing else."""
    fast, seam = pair
    maml_problem = make_problem("maml")
    maml = InfluenceAnalyzer(maml_problem, maml_problem.init_lambda(0, torch.float64), small_tasks)
    for analyzer, kind in ((fast, BodyBinding), (seam, SeamBinding), (maml, UnrolledBinding)):
        assert type(analyzer.binding) is kind and isinstance(analyzer.binding, Binding)
        assert analyzer.bound.binding is analyzer.binding
    assert not isinstance(object(), Binding)


def test_refinement_levels_are_computed_once(tasks, monkeypatch):
    """edit(refine=2) after edit(refine=1) takes one more Newton step, not two: each step re-binds
    the inner problems at least once (its Armijo trial)."""
    problem = make_problem("ridge")
    fast = InfluenceAnalyzer(problem, problem.init_lambda(0, torch.float64), tasks, config=InfluenceConfig(
        variant="gn", solver=SolverConfig(damping=1.0, rtol=1e-12, max_iter=500)))
    removal = {"tasks": [0, 3]}
    calls = []
    bind = fast.session.bind
    monkeypatch.setattr(fast.session, "bind", lambda *a, **k: calls.append(1) or bind(*a, **k))
    first = fast.edit(**removal, refine=1)
    after_one = len(calls)
    second = fast.edit(**removal, refine=2)
    assert after_one >= 2 and 1 <= len(calls) - after_one < after_one, (after_one, len(calls))
    torch.testing.assert_close(fast.edit(**removal, refine=1), first)
    assert not torch.equal(first, second)
    fast.set_solver(fast.config.solver)  # a new solver forgets the kept iterates
    torch.testing.assert_close(fast.edit(**removal, refine=1), first)
    assert len(calls) - after_one >= after_one + 1


def test_inner_if_predicts_the_leave_one_out_head(pair, tasks):
    """theta^{-z} ~ theta - w IF_in (math.md §8), to first order in the removed weight."""
    fast, _ = pair
    k, j = 0, 4
    data = task_tuples(tasks, fast.weights.w_tr, fast.weights.w_val)[k]
    eps = 1e-6
    w = data[2].clone()
    w[j] += eps
    theta_eps, _ = bilevel(fast.problem).solve_inner(fast.lam, data[0], data[1], w)
    fd = (theta_eps - fast.binding.theta[k]) / eps
    got = fast.inner_influence([(k, j)])[0]
    assert (got - fd).norm() <= 1e-4 * fd.norm()


@pytest.mark.parametrize("side", ["fast", "seam"])
def test_loss_difference_is_the_weight_derivative_of_the_validation_loss(pair, tasks, side):
    """P(z) = w u^T grad l(z) (math.md §9) = -w d L_k(theta_k(w)) / d w_z: central differences of
    re-solved heads at fixed lambda, on both bindings."""
    an = dict(zip(("fast", "seam"), pair))[side]
    items = [(0, 4), (3, 1)]
    data = task_tuples(tasks, an.weights.w_tr, an.weights.w_val)
    got = an.loss_difference(items)
    eps = 1e-5
    for (k, j), p in zip(items, got):
        x_tr, y_tr, w_tr, x_val, y_val, w_val = data[k]
        losses = []
        for sign in (1, -1):
            w = w_tr.clone()
            w[j] *= 1 + sign * eps
            seam = bilevel(an.problem)
            theta, _ = seam.solve_inner(an.lam, x_tr, y_tr, w)
            losses.append(seam.outer_objective(theta, an.lam, x_val, y_val, w_val))
        fd = -(losses[0] - losses[1]) / (2 * eps)
        assert abs(float(fd)) > 1e-4 and abs(float(p) - float(fd)) <= 1e-6 * abs(float(fd)), (k, j, float(p), float(fd))
    assert float(an.loss_difference([(2, 0)])[0]) == 0.0  # a removed instance changes nothing


def test_ekfac_inner_solver_is_exact_for_the_ridge_head_and_close_for_softmax(tasks):
    """math.md §16: EK-FAC is exact where the output factor is the identity (squared loss); for the
    softmax head it approximates the exact head iHVP."""
    for head, tol in (("ridge", 1e-10), ("logistic", 0.5)):
        problem = make_problem(head)
        lam = problem.init_lambda(0, torch.float64)
        exact = InfluenceAnalyzer(problem, lam, tasks)
        ekfac = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(inner="ekfac"))
        rhs = randn(5 * problem.theta_dim, 3).view(5, -1)
        a, b = exact.bound.rows[0].solve(rhs), ekfac.bound.rows[0].solve(rhs)
        assert (a - b).norm() <= tol * a.norm(), head
        if head == "ridge":
            v = randn(lam.numel(), 4)
            torch.testing.assert_close(ekfac.hvp(v), exact.hvp(v))
    with pytest.raises(ValueError, match="InfluenceConfig.inner must be one of"):
        InfluenceConfig(inner="kfac")


def test_pooled_ekfac_bases(tasks):
    """Pooled over one task the bases are that task's own; over several they still approximate
    the exact head iHVP, and the products stay finite."""
    problem = make_problem("logistic")
    lam = problem.init_lambda(0, torch.float64)
    one = tasks.subset(torch.tensor([2]))
    rhs = randn(3 * problem.theta_dim, 5).view(3, -1)
    per_task, pooled = (InfluenceAnalyzer(problem, lam, one, config=InfluenceConfig(inner=inner))
                        for inner in ("ekfac", "ekfac-pooled"))
    torch.testing.assert_close(pooled.bound.rows[0].solve(rhs[:1]), per_task.bound.rows[0].solve(rhs[:1]))
    exact, pooled = (InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(inner=inner))
                     for inner in ("auto", "ekfac-pooled"))
    per_task = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(inner="ekfac"))
    a, b, c = (an.bound.rows[0].solve(rhs[:1].expand(5, -1)) for an in (exact, pooled, per_task))
    # measured: 6.3% pooled, 1.5% per task; pooling trades accuracy for one basis, never more than 2x
    # of that margin, and never better than the per-task bases it averages
    assert (a - c).norm() <= 0.03 * a.norm() and (a - c).norm() < (a - b).norm() <= 0.1 * a.norm()
    assert torch.isfinite(pooled.hvp(randn(lam.numel(), 6))).all()
    b = exact.binding
    with pytest.raises(ValueError, match="needs bases"):
        FeatureHead(problem).solver(b.theta, b.phi[b.batch.pos_tr], b.batch.y_tr, b.batch.w_tr, "ekfac-pooled")
