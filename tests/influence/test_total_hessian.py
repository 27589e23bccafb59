"""Total-Hessian-vector products (math.md §4) against re-solved finite differences, in float64."""

import pytest
import torch

from metaif.influence import InfluenceAnalyzer, InfluenceConfig, finite_difference_hvp
from metaif.meta import bilevel
from tests.helpers import make_problem, task_tuples

CASES = [("logistic", "auto"), ("logistic", "seam"), ("ridge", "auto"), ("ridge", "seam"), ("imaml", "auto")]


def randn(like, seed):
    return torch.randn(like.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("form,path", CASES)
def test_exact_total_hvp_matches_finite_differences(small_tasks, form, path):
    problem = make_problem(form)
    lam = problem.init_lambda(0, torch.float64)
    an = InfluenceAnalyzer(problem, lam, small_tasks, config=InfluenceConfig(path=path))
    v, w = randn(lam, 2), randn(lam, 3)
    exact = an.hvp(v)
    oracle = finite_difference_hvp(problem, lam, task_tuples(small_tasks), v, an.c)
    assert (exact - oracle).norm() <= 1e-6 * oracle.norm()
    assert abs(float(w @ exact) - float(v @ an.hvp(w))) <= 1e-9 * exact.norm() * w.norm()

    gn = an.hvp(v, "gn")
    torch.testing.assert_close(an.hvp(v, "gamma"), gn + an.gamma_term * v)
    assert (gn - exact).norm() > 1e-6 * exact.norm()  # the third-order term is not zero here
    assert an.diagnostics["inner_grad_norm_max"] < 1e-10


@pytest.mark.parametrize("path", ["auto", "seam"])
def test_direct_variant_holds_theta_fixed(small_tasks, path):
    problem = make_problem("logistic")
    lam = problem.init_lambda(0, torch.float64)
    an = InfluenceAnalyzer(problem, lam, small_tasks, config=InfluenceConfig(path=path))
    data, theta, seam = task_tuples(small_tasks), an.binding.theta, bilevel(problem)
    v = randn(lam, 4)

    def partial_grad(la):
        return problem.gamma * la + sum(ci * torch.func.grad(lambda l_: seam.outer_objective(th, l_, *d[3:]))(la)
                                        for ci, th, d in zip(an.c, theta, data))

    h = 1e-5
    oracle = (partial_grad(lam + h * v) - partial_grad(lam - h * v)) / (2 * h)
    assert (an.hvp(v, "direct") - oracle).norm() <= 1e-6 * oracle.norm()
    with pytest.raises(ValueError, match="variant must be one of"):
        an.hvp(v, "bogus")


class QuadraticProx:
    """A user-defined problem on the seam: iMAML with linear regression, so L^tr is quadratic and
    the third-order term vanishes (math.md §16: exact = gn)."""

    form, gamma, delta = "quad", 1e-2, 0.5

    def inner_objective(self, theta, lam, x, y, w):
        return (w * (x.flatten(1) @ theta - y.to(theta)).pow(2)).sum() / 2 + self.delta / 2 * (theta - lam).pow(2).sum()

    def outer_objective(self, theta, lam, x, y, w):
        return (w * (x.flatten(1) @ theta - y.to(theta)).pow(2)).sum() / 2

    def solve_inner(self, lam, x, y, w, theta0=None):
        a = x.flatten(1).to(lam)
        h = a.T @ (w[:, None] * a) + self.delta * torch.eye(a.shape[1], dtype=lam.dtype)
        theta = torch.linalg.solve(h, a.T @ (w * y.to(lam)) + self.delta * lam)
        return theta, 0.0


def test_exact_equals_gn_for_a_quadratic_inner_loss(small_tasks):
    problem = QuadraticProx()
    lam = randn(torch.zeros(64), 5) * 0.1
    an = InfluenceAnalyzer(problem, lam, small_tasks)
    v = randn(lam, 6)
    torch.testing.assert_close(an.hvp(v), an.hvp(v, "gn"))
    oracle = finite_difference_hvp(problem, lam, task_tuples(small_tasks), v, an.c)
    assert (an.hvp(v) - oracle).norm() <= 1e-6 * oracle.norm()
