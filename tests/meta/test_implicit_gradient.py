"""The implicit total gradient (math.md §3) against independent references, in float64."""

import pytest
import torch

from metaif.data import TaskConfig, load_digits, sample_tasks, split_classes
from metaif.meta import AnilConfig, AnilProblem, ImamlConfig, ImamlProblem, TaskBatch
from metaif.meta.implicit import total_gradient
from metaif.models import mlp


@pytest.fixture(scope="module")
def batch():
    pool, _ = split_classes(load_digits(), 0.5, seed=0)
    tasks = sample_tasks(pool, TaskConfig(ways=3, shots=3, queries=4, num_tasks=3, seed=0))
    return TaskBatch.from_taskset(tasks, dtype=torch.float64)


def total_objective(problem, lam, batch, weights):
    """sum_i c_i L_i(theta_i(lambda), lambda) with every inner problem re-solved."""
    if problem.form == "anil":
        phi_tr, phi_val = problem.features(lam, batch.x_tr), problem.features(lam, batch.x_val)
        theta, _ = problem.solve_heads(phi_tr, batch.y_tr, batch.w_tr)
        return float((weights * problem.head_outer_objective(theta, phi_val, batch.y_val, batch.w_val)).sum())
    total = 0.0
    for i in range(len(batch)):
        theta, _ = problem.solve_inner(lam, batch.x_tr[i], batch.y_tr[i], batch.w_tr[i])
        total += float(weights[i] * problem.data_loss(theta, batch.x_val[i], batch.y_val[i], batch.w_val[i]))
    return total


def check_against_finite_differences(problem, lam, batch, h=1e-5, directions=3, rtol=1e-5):
    weights = torch.full((len(batch),), 1.0 / len(batch), dtype=torch.float64)
    grad, info = problem.outer_gradient(lam, batch, weights)
    assert info["inner_grad_norm"] < 1e-8
    gen = torch.Generator().manual_seed(1)
    for _ in range(directions):
        v = torch.randn(lam.shape, generator=gen, dtype=torch.float64)
        v /= v.norm()
        fd = (total_objective(problem, lam + h * v, batch, weights) - total_objective(problem, lam - h * v, batch, weights)) / (2 * h)
        assert abs(float(grad @ v) - fd) <= rtol * max(abs(fd), grad.norm().item() * 1e-3), (float(grad @ v), fd)


def test_ridge_anil_matches_autograd_through_the_closed_form(batch):
    problem = AnilProblem(mlp(64, (8,)), AnilConfig(ways=3, head="ridge", delta=0.3))
    lam = problem.init_lambda(0, torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    grad, _ = problem.outer_gradient(lam, batch, weights)

    lam_req = lam.clone().requires_grad_(True)
    phi_tr, phi_val = problem.features(lam_req, batch.x_tr), problem.features(lam_req, batch.x_val)
    gram = torch.einsum("bn,bnk,bnl->bkl", batch.w_tr, phi_tr, phi_tr) + 0.3 * torch.eye(phi_tr.shape[-1], dtype=torch.float64)
    rhs = torch.einsum("bn,bnk,bnc->bkc", batch.w_tr, phi_tr, torch.nn.functional.one_hot(batch.y_tr, 3).double())
    theta = torch.linalg.solve(gram, rhs).mT.flatten(1)  # [B, C*(h+1)], class-major
    closed = (weights * problem.head_outer_objective(theta, phi_val, batch.y_val, batch.w_val)).sum()
    expected = torch.autograd.grad(closed, lam_req)[0]
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_logistic_anil_matches_finite_differences(batch):
    problem = AnilProblem(mlp(64, (8,), "tanh"), AnilConfig(ways=3, head="logistic", delta=0.3, inner_tol=1e-12))
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
        problem = AnilProblem(mlp(64, (8,), "tanh"), AnilConfig(ways=3, head=form[5:], delta=0.3, inner_tol=1e-12))
    lam = problem.init_lambda(0, torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    fast, _ = problem.outer_gradient(lam, batch, weights)
    generic = sum(weights[i] * total_gradient(problem, lam, batch.x_tr[i], batch.y_tr[i], batch.w_tr[i],
                                              batch.x_val[i], batch.y_val[i], batch.w_val[i]) for i in range(len(batch)))
    torch.testing.assert_close(fast, generic, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("head", ["logistic", "ridge"])
def test_head_hessian_factor_and_both_head_solvers(batch, head):
    """H_i = delta I + U U^T (the few-shot factor the Woodbury solve uses) equals the dense
    Hessian, and the Woodbury and Cholesky solvers agree."""
    problem = AnilProblem(mlp(64, (12,), "tanh"), AnilConfig(ways=3, head=head, delta=0.3))
    lam = problem.init_lambda(0, torch.float64)
    phi = problem.features(lam, batch.x_tr)
    theta = torch.randn(len(batch), problem.theta_dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = problem.head_inner_factor(theta, phi, batch.w_tr)
    dense = problem.head_inner_hessian(theta, phi, batch.w_tr)
    torch.testing.assert_close(u @ u.mT + 0.3 * torch.eye(problem.theta_dim, dtype=torch.float64), dense)
    rhs = torch.randn(len(batch), problem.theta_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert phi.shape[1] * 3 < problem.theta_dim  # the Woodbury branch
    torch.testing.assert_close(problem.head_solver(theta, phi, batch.w_tr)(rhs),
                               torch.linalg.solve(dense, rhs.unsqueeze(-1)).squeeze(-1))
    many = phi.repeat(1, 4, 1)  # n C >= q: the dense branch
    w = batch.w_tr.repeat(1, 4) / 4
    torch.testing.assert_close(problem.head_solver(theta, many, w)(rhs),
                               torch.linalg.solve(problem.head_inner_hessian(theta, many, w), rhs.unsqueeze(-1)).squeeze(-1))
