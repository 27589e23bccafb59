"""The implicit total gradient (math.md §3) against independent references, in float64."""

import pytest
import torch

from metaif.data import TaskConfig, load_digits, sample_tasks, split_classes
from metaif.meta import AnilConfig, AnilProblem, FeatureHead, ImamlConfig, ImamlProblem, TaskBatch
from metaif.meta.implicit import total_gradient
from metaif.meta.train import outer_gradient
from metaif.models import mlp

# its module fixtures are built once: every test of the file on one xdist worker
pytestmark = pytest.mark.xdist_group("test_implicit_gradient")


@pytest.fixture(scope="module")
def batch():
    pool, _ = split_classes(load_digits(), 0.5, seed=0)
    tasks = sample_tasks(pool, TaskConfig(ways=3, shots=3, queries=4, num_tasks=3, seed=0))
    return TaskBatch.from_taskset(tasks, dtype=torch.float64)


def total_objective(problem, lam, batch, weights):
    """sum_i c_i L_i(theta_i(lambda), lambda) with every inner problem re-solved."""
    if problem.form == "anil":
        head = FeatureHead(problem)
        phi_tr, phi_val = head.features(lam, batch.x_tr), head.features(lam, batch.x_val)
        theta, _ = problem.solve_heads(phi_tr, batch.y_tr, batch.w_tr)
        return float((weights * problem.head_outer_objective(theta, phi_val, batch.y_val, batch.w_val)).sum())
    total = 0.0
    for i in range(len(batch)):
        theta, _ = problem.solve_inner(lam, batch.x_tr[i], batch.y_tr[i], batch.w_tr[i])
        total += float(weights[i] * problem.data_loss(theta, batch.x_val[i], batch.y_val[i], batch.w_val[i]))
    return total


def check_against_finite_differences(problem, lam, batch, h=1e-5, directions=3, rtol=1e-5):
    weights = torch.full((len(batch),), 1.0 / len(batch), dtype=torch.float64)
    grad, info = outer_gradient(problem, lam, batch, weights)
    assert info["inner_grad_norm"] < 1e-8
    gen = torch.Generator().manual_seed(1)
    for _ in range(directions):
        v = torch.randn(lam.shape, generator=gen, dtype=torch.float64)
        v /= v.norm()
        plus, minus = (total_objective(problem, lam + s * h * v, batch, weights) for s in (1, -1))
        fd = (plus - minus) / (2 * h)
        assert abs(float(grad @ v) - fd) <= rtol * max(abs(fd), grad.norm().item() * 1e-3), (float(grad @ v), fd)


def test_ridge_anil_matches_autograd_through_the_closed_form(batch):
    problem = AnilProblem(mlp(64, (8,)), AnilConfig(ways=3, loss="squared", delta=0.3))
    lam = problem.init_lambda(0, torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    grad, _ = outer_gradient(problem, lam, batch, weights)

    lam_req = lam.clone().requires_grad_(True)
    head = FeatureHead(problem)
    phi_tr, phi_val = head.features(lam_req, batch.x_tr), head.features(lam_req, batch.x_val)
    phi_tr = torch.cat([phi_tr, torch.ones_like(phi_tr[..., :1])], -1)  # the head folds a bias feature in
    gram = torch.einsum("bn,bnk,bnl->bkl", batch.w_tr, phi_tr, phi_tr) + 0.3 * torch.eye(phi_tr.shape[-1], dtype=torch.float64)
    rhs = torch.einsum("bn,bnk,bnc->bkc", batch.w_tr, phi_tr, torch.nn.functional.one_hot(batch.y_tr, 3).double())
    theta = torch.linalg.solve(gram, rhs).mT.flatten(1)  # [B, C*(h+1)], class-major
    closed = (weights * problem.head_outer_objective(theta, phi_val, batch.y_val, batch.w_val)).sum()
    expected = torch.autograd.grad(closed, lam_req)[0]
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_logistic_anil_matches_finite_differences(batch):
    problem = AnilProblem(mlp(64, (8,), "tanh"), AnilConfig(ways=3, delta=0.3, inner_tol=1e-12))
    check_against_finite_differences(problem, problem.init_lambda(0, torch.float64), batch)


def test_imaml_matches_finite_differences(batch):
    problem = ImamlProblem(mlp(64, (6,), "tanh"), ImamlConfig(ways=3, delta=2.0, inner_tol=1e-12, inner_max_iter=500,
                                                      cg_rtol=1e-13, cg_max_iter=500))
    check_against_finite_differences(problem, problem.init_lambda(0, torch.float64), batch, rtol=1e-5)


@pytest.mark.parametrize("form", ["anil-logistic", "anil-ridge", "imaml"])
def test_fast_paths_equal_the_generic_seam_formula(batch, form):
    """Both forms' batched outer gradients equal the generic formula on their per-task objectives."""
    if form == "imaml":
        problem = ImamlProblem(mlp(64, (4,), "tanh"), ImamlConfig(ways=3, delta=2.0, inner_tol=1e-12,
                                                                  inner_max_iter=500, cg_rtol=1e-13, cg_max_iter=500))
    else:
        loss = {"logistic": "softmax", "ridge": "squared"}[form[5:]]
        problem = AnilProblem(mlp(64, (8,), "tanh"), AnilConfig(ways=3, loss=loss, delta=0.3, inner_tol=1e-12))
    lam = problem.init_lambda(0, torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    fast, _ = outer_gradient(problem, lam, batch, weights)
    generic = sum(weights[i] * total_gradient(problem, lam, batch.x_tr[i], batch.y_tr[i], batch.w_tr[i],
                                              batch.x_val[i], batch.y_val[i], batch.w_val[i]) for i in range(len(batch)))
    torch.testing.assert_close(fast, generic, rtol=1e-8, atol=1e-10)
