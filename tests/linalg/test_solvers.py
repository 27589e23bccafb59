"""Every registered solver against dense solves; honest residuals, divergence and the retry
policy (float64 unless stated)."""

import warnings

import pytest
import torch

from metaif.linalg import (
    SOLVERS,
    Diverged,
    MatvecOperator,
    MetaifWarning,
    NotConverged,
    NotPositiveDefinite,
    SolverConfig,
    conjugate_gradient,
    dense_operator,
    solve,
)
from metaif.linalg.cg import reached, rounding_noise
from metaif.linalg.result import FLOOR_MARGIN
from tests.helpers import randn


def total_hessian_like(p=60, m=6, gamma=0.05, seed=0):
    """gamma I + a mean of low-rank task terms, as a total Hessian is; and its terms (for LiSSA)."""
    gen = torch.Generator().manual_seed(seed)
    terms = [torch.randn(p, 4, generator=gen, dtype=torch.float64) for _ in range(m)]
    a = gamma * torch.eye(p, dtype=torch.float64) + sum(t @ t.T for t in terms) / m

    def sampled(v, g):
        pick = torch.randperm(m, generator=g)[:3]
        return gamma * v + sum(v @ terms[i] @ terms[i].T for i in pick) / 3

    return a, MatvecOperator(lambda v: v @ a, p, a.dtype, a.device, sampled)


def with_spectrum(values, seed=0, dtype=torch.float64):
    q = torch.linalg.qr(randn((len(values), len(values)), seed))[0]
    return ((q * torch.as_tensor(values, dtype=torch.float64)) @ q.T).to(dtype)


@pytest.mark.parametrize("method", sorted(SOLVERS))
def test_every_solver_matches_the_dense_solve(method):
    a, op = total_hessian_like()
    b = randn((3, 60), 1)
    expected = torch.linalg.solve(a + 0.1 * torch.eye(60, dtype=torch.float64), b.T).T
    extra = {"lowrank": {"rank": 60, "floor": 0.05}, "neumann": {"max_iter": 20000}}.get(method, {"max_iter": 500})
    res = solve(op, b, SolverConfig(method=method, damping=0.1, rtol=1e-12, **extra))
    assert (res.x - expected).norm() <= 1e-8 * expected.norm()
    assert res.converged and res.damping == 0.1
    if res.residual is not None:  # iterative: the reported residual is the true one
        true = (b - (res.x @ a + 0.1 * res.x)).norm(dim=1) / b.norm(dim=1)
        torch.testing.assert_close(res.residual, true, rtol=1e-3, atol=1e-15)


def test_truncated_lowrank_and_lissa_approximate():
    a, op = total_hessian_like()
    b = randn((3, 60), 1)
    expected = torch.linalg.solve(a + 0.1 * torch.eye(60, dtype=torch.float64), b.T).T
    err = float((solve(op, b, SolverConfig(method="lowrank", rank=20, damping=0.1)).x - expected).norm() / expected.norm())
    assert 0 < err < 1
    with pytest.warns(MetaifWarning, match="neumann stopped"):  # a stochastic estimate: no tight residual
        lissa = solve(op, b, SolverConfig(method="neumann", damping=0.1, lissa_tasks=3, max_iter=3000,
                                          on_failure="warn"))
    assert (lissa.x - expected).norm() < 0.5 * expected.norm()


def test_the_python_solvers_name_the_kernels_constants():
    """linalg/cg.py's residual-replacement and stagnation constants and linalg/neumann.py's scale and
    divergence constants are the ones the compiled kernels read from include/metaif/arith.h."""
    import re
    from pathlib import Path

    from metaif.linalg import cg, neumann

    header = (Path(__file__).resolve().parents[2] / "include" / "metaif" / "arith.h").read_text()
    named = {name: float(value) for name, value in re.findall(r"constexpr \w+ (k\w+) = ([0-9.eE+-]+);", header)}
    assert (named["kReplaceEvery"], named["kStalls"], named["kStallProgress"]) == \
        (cg.REPLACE_EVERY, cg.STALLS, cg.STALL_PROGRESS)
    assert (named["kPowerIterations"], named["kScaleSafety"], named["kGrowthTolerance"], named["kNoiseEpsilons"]) == \
        (neumann.POWER_ITERATIONS, neumann.SCALE_SAFETY, neumann.GROWTH_TOLERANCE, neumann.NOISE_EPSILONS)


def test_cg_reports_the_true_residual_in_float32():
    """Condition 1e6 in float32: the recursive residual drifts far below the true one."""
    misses = 0
    for seed in range(5):
        a = with_spectrum(torch.logspace(-6, 0, 80).tolist(), seed, torch.float32)
        b = randn((1, 80), seed + 10, torch.float32)
        res = conjugate_gradient(lambda v: v @ a, b[None], 1e-6, 400)
        true = float((b - res.x[0] @ a).double().norm() / b.double().norm())
        assert float(res.resid[0, 0]) == pytest.approx(true, rel=1e-3)
        assert bool(res.converged[0, 0]) == (true <= 1e-6)
        misses += not bool(res.converged[0, 0])
    assert misses > 0  # float32 cannot reach 1e-6 here: the result must say so
    with pytest.raises(NotConverged, match="relative residual"):
        solve(dense_operator(a), b, SolverConfig(method="cg", rtol=1e-6, max_iter=400))
    with pytest.warns(MetaifWarning, match="stopped at relative residual"):
        solve(dense_operator(a), b, SolverConfig(method="cg", rtol=1e-6, max_iter=400, on_failure="warn"))


@pytest.mark.parametrize("seed", range(3))
def test_rounding_noise_measures_the_error_of_a_float32_product(seed):
    """The linearity defect of two products estimates ||fl(A x) - A x|| (float64 reference)."""
    a64 = with_spectrum(torch.logspace(0, 4, 200).tolist(), seed)
    a = a64.float()
    x = randn((1, 3, 200), seed + 2, torch.float32)
    ax = x @ a
    noise = rounding_noise(lambda v: v @ a, x, ax)
    actual = (ax.double() - x.double() @ a64).norm(dim=-1)
    assert ((noise > actual / 3) & (noise < 3 * actual)).all(), (noise / actual).tolist()


@pytest.mark.parametrize("seed", range(2))
def test_cg_stops_at_the_rounding_floor_with_its_best_iterate(seed):
    """Condition 1e4 in float32, rtol 1e-8 out of reach: CG stops at its measured floor long before the
    cap, returns the iterate of smallest true residual (as accurate as float32 allows, against the
    float64 solve), and the policy warns there, raises when asked to be strict, and still raises on a
    miss that is not at the floor."""
    a64 = with_spectrum(torch.logspace(0, 4, 300).tolist(), seed + 3)
    a = a64.float()
    b = randn((4, 300), seed + 4, torch.float32)
    res = conjugate_gradient(lambda v: v @ a, b[None], 1e-8, 3000)
    assert not res.converged.any() and (res.iters < 1000).all()
    assert (res.resid <= FLOOR_MARGIN * res.floor).all() and (res.floor < 1e-3).all()
    assert reached(res).all() and not reached(conjugate_gradient(lambda v: v @ a, b[None], 1e-8, 5)).any()
    true = (b - res.x[0] @ a).double().norm(dim=-1) / b.double().norm(dim=-1)
    torch.testing.assert_close(res.resid[0], true, rtol=0.05, atol=0)  # at the floor, recomputing it adds rounding
    x64 = torch.linalg.solve(a64, b.double().T).T
    assert float(((res.x[0].double() - x64).norm(dim=-1) / x64.norm(dim=-1)).max()) < 3e-4

    config = SolverConfig(method="cg", rtol=1e-8, max_iter=3000)
    with pytest.warns(MetaifWarning, match="rounding floor of float32 products"):
        result = solve(dense_operator(a), b, config)
    assert result.at_floor(1e-8) and 0 < result.summary()["floor_max"] < 1e-3
    with pytest.raises(NotConverged, match="rounding floor"):
        solve(dense_operator(a), b, SolverConfig(method="cg", rtol=1e-8, max_iter=3000, on_failure="raise"))
    with pytest.raises(NotConverged, match="after 5 products; raise max_iter"):
        solve(dense_operator(a), b, SolverConfig(method="cg", rtol=1e-8, max_iter=5))


@pytest.mark.parametrize("seed", range(4))
def test_cg_does_not_claim_convergence_on_a_singular_operator(seed):
    """b has a component in the null space, so no solution exists: CG either meets the zero
    curvature and says the operator is not positive definite, or reports its true residual."""
    a = with_spectrum([0.0] * 5 + torch.linspace(0.5, 2.0, 25).tolist(), seed)
    b = randn((2, 30), seed + 3)
    try:
        res = conjugate_gradient(lambda v: v @ a, b[None], 1e-8, 100)
    except NotPositiveDefinite:
        return
    true = (b - res.x[0] @ a).norm(dim=1) / b.norm(dim=1)
    torch.testing.assert_close(res.resid[0], true)
    assert not bool(res.converged.any())


def test_minres_solves_symmetric_indefinite_systems():
    a = with_spectrum([-2.0, -0.5, 0.3, 1.0, 2.0, 3.0, 4.0, 5.0] * 4)
    b = randn((3, 32), 4)
    res = solve(dense_operator(a), b, SolverConfig(method="minres", rtol=1e-10, max_iter=200))
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b.T).T)
    with pytest.raises(NotPositiveDefinite, match="curvature"):
        solve(dense_operator(a), b, SolverConfig(method="cg"))


def test_a_solve_that_missed_rtol_advises_what_can_help():
    """MINRES stops on its own residual estimate (float64 recurrences); in float32 the true residual
    stays above it, and more iterations cannot help: the error must not advise raising max_iter.
    A column that used every product is told to raise it."""
    a = with_spectrum(torch.logspace(0, 5, 40).tolist()).float()
    b = randn((2, 40), 6).float()
    with pytest.raises(NotConverged) as floor:
        solve(dense_operator(a), b, SolverConfig(method="minres", rtol=1e-7, max_iter=500))
    assert "more products would not help" in str(floor.value) and "raise max_iter" not in str(floor.value)
    with pytest.raises(NotConverged, match="after 3 products; raise max_iter"):
        solve(dense_operator(a), b, SolverConfig(method="minres", rtol=1e-7, max_iter=3))


@pytest.mark.parametrize("smallest", [-1e-3, -1.0])
def test_neumann_refuses_an_indefinite_operator(smallest):
    a = with_spectrum([smallest] + [1.0] * 19)
    with pytest.raises((Diverged, NotPositiveDefinite)):
        solve(dense_operator(a), randn((1, 20), 5), SolverConfig(method="neumann", max_iter=5000))


def test_the_retry_policy_raises_damping_and_says_so():
    a = with_spectrum([-0.05] + [1.0] * 19)
    b = randn((1, 20), 6)
    with pytest.raises(NotPositiveDefinite):
        solve(dense_operator(a), b, SolverConfig(method="dense", damping=0.01))
    with pytest.warns(MetaifWarning, match="Retrying with damping 0.1 \\(was 0.01\\)"):
        res = solve(dense_operator(a), b, SolverConfig(method="dense", damping=0.01, retries=2))
    assert res.damping == pytest.approx(0.1)
    torch.testing.assert_close(res.x, torch.linalg.solve(a + 0.1 * torch.eye(20, dtype=torch.float64), b.T).T)


def test_bad_configs_and_inputs_name_what_is_wrong():
    with pytest.raises(ValueError, match="SolverConfig.method must be one of"):
        SolverConfig(method="gmres")
    with pytest.raises(ValueError, match="SolverConfig.damping must be a finite number >= 0, got -1"):
        SolverConfig(damping=-1)
    with pytest.raises(ValueError, match="SolverConfig.max_iter must be an integer >= 1, got 0"):
        SolverConfig(max_iter=0)
    with pytest.raises(ValueError, match="SolverConfig.rtol"):
        SolverConfig(rtol=float("nan"))
    a, op = total_hessian_like()
    with pytest.raises(ValueError, match=r"right-hand sides must be \[k, 60\]"):
        solve(op, torch.zeros(60, dtype=torch.float64), SolverConfig())
    with pytest.raises(ValueError, match="NaN or inf"):
        solve(op, torch.full((1, 60), float("nan"), dtype=torch.float64), SolverConfig())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solve(op, torch.zeros(1, 60, dtype=torch.float64), SolverConfig()).x.abs().sum() == 0


def test_a_spectral_preconditioner_cuts_cg_iterations_and_keeps_the_answer():
    """A spectrum with a few large outliers, as Hessians have: deflating them leaves the bulk."""
    q = torch.linalg.qr(randn((300, 300), 11))[0]
    values = torch.cat([torch.logspace(1, 3, 15, dtype=torch.float64), torch.linspace(0.05, 1.0, 285,
                                                                                      dtype=torch.float64)])
    a = (q * values) @ q.T
    b = randn((2, 300), 12)
    expected = torch.linalg.solve(a, b.T).T
    plain = solve(dense_operator(a), b, SolverConfig(rtol=1e-8, max_iter=1000))
    deflated = solve(dense_operator(a), b, SolverConfig(rtol=1e-8, max_iter=1000, precondition=20))
    assert (deflated.x - expected).norm() <= 1e-7 * expected.norm() and deflated.converged
    assert int(deflated.iterations.max()) + 20 < int(plain.iterations.max()) / 2
    assert deflated.info["precondition_products"] == 20
