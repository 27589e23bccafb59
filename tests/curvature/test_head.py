"""Head curvature: the few-shot factor and every registered head solver against the dense
Hessian and torch.func, per loss (float64)."""

import pytest
import torch
from torch.func import hessian, vmap

from metaif.curvature import HEAD_SOLVERS, LOSSES, get_loss, head_solver, pooled_kfe_bases
from metaif.meta import AnilConfig, AnilProblem
from metaif.models import mlp
from tests.helpers import randn

CLASSES = {"softmax": 3, "squared": 3, "binary": 2}


def head_setup(loss: str, n: int = 4, tasks: int = 3):
    problem = AnilProblem(mlp(6, (5,), "tanh"), AnilConfig(ways=CLASSES[loss], loss=loss, delta=0.3))
    phi = randn((tasks, n, 5), 0)
    y = torch.randint(0, CLASSES[loss], (tasks, n), generator=torch.Generator().manual_seed(1))
    w = torch.rand(tasks, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64) / n
    theta = randn((tasks, problem.theta_dim), 3)
    return problem, theta, phi, y, w


def autograd_hessian(problem, theta, phi, y, w):
    def one(th, ph, yy, ww):
        return problem.head_inner_objective(th[None], ph[None], yy[None], ww[None])[0]

    return vmap(hessian(one))(theta, phi, y, w)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_loss_derivatives_match_autograd(loss):
    fn = get_loss(loss)
    logits = randn((7, fn.outputs(CLASSES[loss])), 4)
    y = torch.randint(0, CLASSES[loss], (7,), generator=torch.Generator().manual_seed(5))
    grad = torch.func.vmap(torch.func.grad(lambda z, t: fn.value(z[None], t[None])[0]))(logits, y)
    torch.testing.assert_close(fn.residual(logits, y), grad)
    hess = torch.func.vmap(torch.func.hessian(lambda z, t: fn.value(z[None], t[None])[0]))(logits, y)
    torch.testing.assert_close(fn.hessian(logits), hess)


def test_squared_loss_takes_real_valued_targets():
    fn = get_loss("squared")
    logits, targets = randn((4, 2), 0), randn((4, 2), 1)
    torch.testing.assert_close(fn.value(logits, targets), 0.5 * (logits - targets).pow(2).sum(-1))
    torch.testing.assert_close(fn.value(logits[:, :1], targets[:, 0]), 0.5 * (logits[:, 0] - targets[:, 0]) ** 2)
    with pytest.raises(ValueError, match="2 classes"):
        get_loss("binary").outputs(3)
    with pytest.raises(ValueError, match="loss must be one of"):
        get_loss("hinge")


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_curvature_factor_and_dense_hessian(loss):
    problem, theta, phi, y, w = head_setup(loss)
    curv = problem.head_curvature(theta, phi, y, w, damping=0.05)
    exact = autograd_hessian(problem, theta, phi, y, w)
    eye = torch.eye(problem.theta_dim, dtype=torch.float64)
    torch.testing.assert_close(curv.dense(), exact + 0.05 * eye)
    u = curv.factor()
    torch.testing.assert_close(u @ u.mT + curv.damping * eye, curv.dense())
    v = randn((3, problem.theta_dim), 6)
    torch.testing.assert_close(curv.matvec(v), (curv.dense() @ v[..., None])[..., 0])


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("method", ["woodbury", "cholesky", "cg", "auto"])
def test_exact_head_solvers_invert_the_dense_hessian(loss, method):
    problem, theta, phi, y, w = head_setup(loss)
    curv = problem.head_curvature(theta, phi, y, w, damping=0.05)
    rhs = randn((3, problem.theta_dim), 7)
    expected = torch.linalg.solve(curv.dense(), rhs[..., None])[..., 0]
    torch.testing.assert_close(head_solver(curv, method)(rhs), expected, rtol=1e-8, atol=1e-9)


def test_auto_picks_cholesky_when_the_examples_outnumber_the_head():
    problem, theta, phi, y, w = head_setup("softmax", n=12)  # n C = 36 >= q = 18
    curv = problem.head_curvature(theta, phi, y, w)
    rhs = randn((3, problem.theta_dim), 8)
    torch.testing.assert_close(head_solver(curv, "auto")(rhs), torch.linalg.solve(curv.dense(), rhs[..., None])[..., 0])


def test_ekfac_is_exact_for_one_output_with_squared_loss():
    """math.md §16: EK-FAC is exact for a single linear layer with squared loss and K = 1."""
    problem = AnilProblem(mlp(6, (5,), "tanh"), AnilConfig(ways=1, loss="squared", delta=0.3))
    phi, w = randn((3, 4, 5), 0), torch.full((3, 4), 0.25, dtype=torch.float64)
    y, theta = randn((3, 4), 1), randn((3, problem.theta_dim), 2)
    curv = problem.head_curvature(theta, phi, y, w)
    rhs = randn((3, problem.theta_dim), 3)
    expected = torch.linalg.solve(curv.dense(), rhs[..., None])[..., 0]
    torch.testing.assert_close(head_solver(curv, "ekfac")(rhs), expected)


def test_pooled_bases_of_one_task_are_its_own_and_bad_names_are_refused():
    problem, theta, phi, y, w = head_setup("softmax", tasks=1)
    curv = problem.head_curvature(theta, phi, y, w)
    rhs = randn((1, problem.theta_dim), 4)
    torch.testing.assert_close(head_solver(curv, "ekfac-pooled", pooled_kfe_bases(curv))(rhs),
                               head_solver(curv, "ekfac")(rhs))
    with pytest.raises(ValueError, match="needs bases"):
        head_solver(curv, "ekfac-pooled")
    with pytest.raises(ValueError, match="head solver must be one of"):
        head_solver(curv, "lu")
    assert set(HEAD_SOLVERS) >= {"woodbury", "cholesky", "cg", "ekfac", "ekfac-pooled", "auto"}
