import pytest
import torch

from metaif import ops, reference
from tests.helpers import ce_head_problem, noncontiguous, spd, tol

DTYPES = [torch.float64, torch.float32]


def dense_solution(a, b, damping=0.0):
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    return torch.linalg.solve(a + damping * eye, b.mT).mT


def ce_head_dense(feats, probs, weights, damping):
    """The ce-head Hessian as explicit [T, Cd, Cd] matrices, built column by column."""
    tasks, _, d = feats.shape
    q = probs.shape[2] * d
    basis = torch.eye(q, dtype=feats.dtype).reshape(1, q, probs.shape[2], d).expand(tasks, -1, -1, -1)
    return ops.ce_head_hvp(feats, probs, basis.contiguous(), damping, weights).reshape(tasks, q, q).mT


@pytest.mark.parametrize("dtype", DTYPES)
def test_neumann_dense_converges_to_solve(dtype):
    a, b = spd(4, 10, dtype), torch.randn(4, 3, 10, dtype=dtype)
    exact = dense_solution(a, b, 0.1)
    errors = [(ops.neumann_dense(a, b, iters, damping=0.1) - exact).norm().item() for iters in (5, 20, 80, 400)]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < (1e-9 if dtype == torch.float64 else 1e-4) * exact.norm().item()


@pytest.mark.parametrize("dtype", DTYPES)
def test_neumann_matches_reference_loop(dtype):
    a, b = spd(3, 8, dtype), torch.randn(3, 2, 8, dtype=dtype)
    scale = torch.tensor([3.0, 4.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(ops.neumann_dense(a, b, 30, scale, 0.2), reference.neumann_dense(a, b, 30, scale, 0.2),
                               **tol(dtype))
    feats, probs, weights = ce_head_problem(3, 6, 4, 3, dtype)
    hb = torch.randn(3, 2, 3, 4, dtype=dtype)
    torch.testing.assert_close(ops.neumann_ce_head(feats, probs, hb, 30, 2.0, 0.1, weights),
                               reference.neumann_ce_head(feats, probs, hb, 30, 2.0, 0.1, weights), **tol(dtype))


def test_neumann_ce_head_converges_to_solve():
    feats, probs, weights = ce_head_problem(3, 6, 4, 3, torch.float64)
    b = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    exact = dense_solution(ce_head_dense(feats, probs, weights, 0.5), b.flatten(2)).reshape(b.shape)
    torch.testing.assert_close(ops.neumann_ce_head(feats, probs, b, 3000, damping=0.5, weights=weights), exact,
                               rtol=1e-8, atol=1e-8)


def with_spectrum(values, dtype=torch.float64):
    """One task ``[1, q, q]`` with the given eigenvalues."""
    q = torch.linalg.qr(torch.randn(len(values), len(values), dtype=torch.float64))[0]
    return ((q * torch.as_tensor(values, dtype=torch.float64)) @ q.T).to(dtype)[None]


def test_neumann_detects_divergence_and_bad_values():
    a, b = spd(2, 6, torch.float64), torch.randn(2, 1, 6, dtype=torch.float64)
    lam_max = torch.linalg.eigvalsh(a)[:, -1]
    with pytest.raises(RuntimeError, match="diverges in task 0.*raise scale"):
        ops.neumann_dense(a, b, 200, scale=(0.3 * lam_max).double())
    with pytest.raises(RuntimeError, match="diverges|not positive definite"):
        ops.neumann_dense(a - 3.0 * torch.eye(6, dtype=torch.float64), b, 500)
    with pytest.raises(RuntimeError, match="b has non-finite values in task 1"):
        ops.neumann_dense(a, torch.stack([b[0], b[1] * float("nan")]), 5)
    with pytest.raises(RuntimeError, match="1 / scale is not a finite positive number in task"):
        ops.neumann_dense(a, b, 5, scale=torch.tensor([1.0, -1.0], dtype=torch.float64))
    with pytest.raises(RuntimeError, match="iters must be >= 0"):
        ops.neumann_dense(a, b, -1, scale=1.0)
    with pytest.raises(RuntimeError, match=r"scale\.shape\[0\] must equal the number of tasks"):
        ops.neumann_dense(a, b, 5, scale=torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_neumann_slow_growth_and_slightly_indefinite_operators_raise(dtype):
    """Eigenvalue 2.0009 at scale 1 (terms grow by 0.09% a step) and eigenvalue -1e-3: both grow
    too slowly for a step-to-step test but not for a test against the smallest term so far."""
    b = torch.randn(1, 1, 8, dtype=dtype)
    with pytest.raises(RuntimeError, match="diverges"):
        ops.neumann_dense(with_spectrum([2.0009] + [1.0] * 7, dtype), b, 2000, scale=1.0)
    with pytest.raises(RuntimeError, match="diverges|not positive definite"):
        ops.neumann_dense(with_spectrum([-1e-3] + [1.0] * 7, dtype), b, 5000)


def test_neumann_oscillation_and_zero_operators_are_reported():
    b = torch.randn(1, 1, 8, dtype=torch.float64)
    at_edge = with_spectrum([2.0] + [1.0] * 7)  # (1 - 2/1) = -1: the series oscillates forever
    ops.neumann_dense(at_edge, b, 50, scale=1.0)  # no growth, so without rtol nothing to see
    with pytest.raises(RuntimeError, match="relative residual in task 0, column 0 is .* > rtol"):
        ops.neumann_dense(at_edge, b, 50, scale=1.0, rtol=1e-6)
    with pytest.raises(RuntimeError, match="operator is zero or not positive definite"):
        ops.neumann_dense(torch.zeros(1, 8, 8, dtype=torch.float64), b, 10)
    x = ops.neumann_dense(with_spectrum([0.5] * 8), b, 200, rtol=1e-10)  # converged: rtol passes
    torch.testing.assert_close(x, 2.0 * b)


def test_ce_head_solvers_need_damping_on_the_singular_hessian():
    feats, probs, weights = ce_head_problem(1, 5, 4, 3, torch.float64)
    b = torch.randn(1, 1, 3, 4, dtype=torch.float64)
    for solver in (lambda d: ops.neumann_ce_head(feats, probs, b, 100, damping=d),
                   lambda d: ops.cg_ce_head(feats, probs, b, damping=d)):
        with pytest.raises(RuntimeError, match="damping must be > 0.*singular"):
            solver(0.0)
        solver(1e-2)


def test_scale_none_is_estimated_in_the_kernel():
    a, b = spd(3, 10, torch.float64), torch.randn(3, 2, 10, dtype=torch.float64)
    torch.testing.assert_close(ops.neumann_dense(a, b, 2000, damping=0.1, rtol=1e-10), dense_solution(a, b, 0.1))
    with torch.device("meta"):  # traceable: the fake kernel needs no scale
        out = ops.neumann_dense(torch.empty(3, 10, 10), torch.empty(3, 2, 10), 5)
    assert out.shape == (3, 2, 10) and out.device.type == "meta"


@pytest.mark.parametrize("dtype", DTYPES)
def test_cg_dense_converges_to_solve(dtype):
    a, b = spd(5, 12, dtype), torch.randn(5, 3, 12, dtype=dtype)
    res = ops.cg_dense(a, b, damping=0.05, rtol=1e-10 if dtype == torch.float64 else 1e-5, maxiter=200)
    torch.testing.assert_close(res.x, dense_solution(a, b, 0.05), **(tol(dtype) if dtype == torch.float64
                                                                   else dict(rtol=1e-3, atol=1e-4)))
    assert res.iters.shape == (5, 3) and res.iters.dtype == torch.int64 and bool((res.iters > 0).all())
    assert bool((res.resid <= (1e-10 if dtype == torch.float64 else 1e-5)).all())


def test_cg_matches_reference_and_reports_iterations():
    a, b = spd(4, 15, torch.float64), torch.randn(4, 2, 15, dtype=torch.float64)
    b[1, 1] = 0.0
    ours, ref = ops.cg_dense(a, b, 0.0, 1e-8, 100), reference.cg_dense(a, b, 0.0, 1e-8, 100)
    torch.testing.assert_close(ours.x, ref.x)
    assert torch.equal(ours.iters, ref.iters)
    assert ours.iters[1, 1] == 0 and ours.resid[1, 1] == 0 and not ours.x[1, 1].any()
    capped = ops.cg_dense(a, b, 0.0, 1e-14, 3)
    assert int(capped.iters.max()) == 3 and bool((capped.resid[capped.iters == 3] > 1e-14).all())
    assert not ops.cg_dense(a, b, 0.0, 1e-8, 0).x.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_column_is_solved_as_if_alone(dtype):
    """The CPU kernels solve a task's columns together, one product for all of them: each column's x,
    iteration count and residual are the ones it gets alone, whether its batch-mates stop sooner (an
    eigenvector: one iteration; zero: none) or run to the cap."""
    a = spd(3, 20, dtype)
    b = torch.randn(3, 4, 20, dtype=dtype)
    b[:, 1] = torch.linalg.eigh(a.double())[1][:, :, 0].to(dtype)
    b[0, 2] = 0.0
    feats, probs, weights = ce_head_problem(3, 7, 4, 3, dtype)
    hb = torch.randn(3, 4, 3, 4, dtype=dtype)
    solvers = [lambda rhs: ops.cg_dense(a, rhs, 0.1, 1e-5, 100),
               lambda rhs: ops.cg_dense(a, rhs, 0.1, 1e-14, 4),
               lambda rhs: ops.cg_ce_head(feats, probs, rhs, 0.1, 1e-5, 100, weights)]
    first = solvers[0](b)
    assert bool((first.iters[:, 1] <= 2).all()) and first.iters[0, 2] == 0 and bool((first.iters[:, 0] > 5).all())
    for solve, rhs in zip(solvers, (b, b, hb)):
        together = solve(rhs)
        alone = [solve(rhs[:, c:c + 1]) for c in range(4)]
        torch.testing.assert_close(together.x, torch.cat([r.x for r in alone], 1), **tol(dtype))
        assert torch.equal(together.iters, torch.cat([r.iters for r in alone], 1))
        torch.testing.assert_close(together.resid, torch.cat([r.resid for r in alone], 1), **tol(dtype))
    for neumann, rhs in ((lambda r: ops.neumann_dense(a, r, 30, damping=0.1), b),
                         (lambda r: ops.neumann_ce_head(feats, probs, r, 30, None, 0.1, weights), hb)):
        torch.testing.assert_close(neumann(rhs), torch.cat([neumann(rhs[:, c:c + 1]) for c in range(4)], 1),
                                   **tol(dtype))


def test_cg_ce_head_converges_to_solve():
    feats, probs, weights = ce_head_problem(3, 6, 4, 3, torch.float64)
    b = torch.randn(3, 2, 3, 4, dtype=torch.float64)
    exact = dense_solution(ce_head_dense(feats, probs, weights, 0.1), b.flatten(2)).reshape(b.shape)
    res = ops.cg_ce_head(noncontiguous(feats), probs, noncontiguous(b), 0.1, 1e-12, 500, weights)
    torch.testing.assert_close(res.x, exact)
    ref = reference.cg_ce_head(feats, probs, b, 0.1, 1e-12, 500, weights)
    torch.testing.assert_close(res.x, ref.x)


def test_cg_raises_on_non_positive_curvature():
    a = spd(2, 6, torch.float64) - 5.0 * torch.eye(6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="non-positive curvature.*add damping"):
        ops.cg_dense(a, torch.randn(2, 1, 6, dtype=torch.float64))
    feats, probs, _ = ce_head_problem(1, 3, 4, 3, torch.float64)
    with pytest.raises(RuntimeError, match="damping must be > 0"):  # singular without damping
        ops.cg_ce_head(feats, probs, torch.randn(1, 1, 3, 4, dtype=torch.float64), damping=-1e-3)


def test_solver_bad_input():
    a, b = spd(2, 6, torch.float64), torch.randn(2, 1, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"b\.shape\[2\] must equal a\.shape\[1\] \(q\)"):
        ops.cg_dense(a, b[..., :5])
    with pytest.raises(RuntimeError, match=r"a must be square per task"):
        ops.cg_dense(a[..., :5], b)
    with pytest.raises(RuntimeError, match="maxiter must be >= 0"):
        ops.cg_dense(a, b, maxiter=-2)
    with pytest.raises(RuntimeError, match="rtol must be finite"):
        ops.cg_dense(a, b, rtol=float("nan"))
    with pytest.raises(RuntimeError, match="b has dtype Float but a has Double"):
        ops.cg_dense(a, b.float())


def test_empty_batches():
    a = spd(2, 4, torch.float64)
    empty_b = torch.zeros(2, 0, 4, dtype=torch.float64)
    assert ops.cg_dense(a, empty_b).x.shape == (2, 0, 4)
    assert ops.neumann_dense(a, empty_b, 3, scale=1.0).shape == (2, 0, 4)
    no_tasks = ops.cg_dense(torch.zeros(0, 4, 4, dtype=torch.float64), torch.zeros(0, 2, 4, dtype=torch.float64))
    assert no_tasks.x.shape == (0, 2, 4) and no_tasks.iters.shape == (0, 2)


def test_solvers_gradcheck_and_opcheck():
    a = spd(2, 5, torch.float64)
    b = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    scale = torch.full((2,), 4.0, dtype=torch.float64)
    asym = a + 0.01 * torch.randn(2, 5, 5, dtype=torch.float64)  # the backward must use A^T
    assert torch.autograd.gradcheck(lambda v: ops.neumann_dense(asym, v, 15, scale, 0.1), (b,))
    assert torch.autograd.gradcheck(lambda v: ops.cg_dense(a, v, 0.1, 1e-13, 100).x, (b,))
    feats, probs, weights = ce_head_problem(2, 4, 3, 3, torch.float64)
    hb = torch.randn(2, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ops.neumann_ce_head(feats, probs, v, 10, 2.0, 0.2, weights), (hb,))
    assert torch.autograd.gradcheck(lambda v: ops.cg_ce_head(feats, probs, v, 0.2, 1e-13, 200, weights).x, (hb,))
    torch.library.opcheck(torch.ops.metaif.neumann_dense.default, (a, b, scale, 10, 0.1, None))
    torch.library.opcheck(torch.ops.metaif.neumann_dense.default, (a, b, None, 10, 0.1, 1.0))
    torch.library.opcheck(torch.ops.metaif.cg_dense.default, (a, b, 0.1, 1e-10, 50))
    torch.library.opcheck(torch.ops.metaif.neumann_ce_head.default, (feats, probs, weights, hb, scale, 10, 0.2, None))
    torch.library.opcheck(torch.ops.metaif.cg_ce_head.default, (feats, probs, None, hb, 0.2, 1e-10, 50))
