"""The CUDA kernels' per-task code, run on the CPU (``torch.ops.metaif_emulate``): one thread, and a
block of 4 std::threads with the barriers and ordered reductions of a CUDA block, against the CPU
kernels. Only launch configuration and memory placement are left for the GPU tests."""

import pytest
import torch

from metaif import ops
from tests.helpers import ce_head_problem, spd, tol

try:
    import metaif._emulate  # noqa: F401  (registers torch.ops.metaif_emulate)
except ImportError as err:  # a failure, not a skip: these are the only runs of the CUDA team code here
    raise ImportError("the test-only emulation ops are not built: install with -Ccmake.define.METAIF_TEST_OPS=ON "
                      "(the README's set-up command does)") from err

EMULATE = torch.ops.metaif_emulate
TEAMS = [0, 4]  # 0: one thread; 4: a block of four
DTYPES = [torch.float64, torch.float32]


def scales(tasks, value):
    return torch.full((tasks,), value, dtype=torch.float64)


@pytest.mark.parametrize("threads", TEAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_solvers_match_the_cpu_kernels(threads, dtype):
    a, b = spd(3, 13, dtype), torch.randn(3, 2, 13, dtype=dtype)
    b[1, 0] = 0.0  # a zero right-hand side: x = 0, no iteration
    for scale in (None, scales(3, 4.0)):
        torch.testing.assert_close(EMULATE.neumann_dense(a, b, scale, 40, 0.1, 1e-2, threads),
                                   ops.neumann_dense(a, b, 40, scale, 0.1, rtol=1e-2), **tol(dtype))
    got, want = EMULATE.cg_dense(a, b, 0.1, 1e-6, -1, threads), ops.cg_dense(a, b, 0.1, 1e-6)
    torch.testing.assert_close(got[0], want.x, **tol(dtype))
    assert (got[1] - want.iters).abs().max() <= 1 and got[1][1, 0] == 0
    assert got[2].max() <= 1e-6 and got[2][1, 0] == 0


@pytest.mark.parametrize("threads", TEAMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ce_head_operator_and_solvers_match_the_cpu_kernels(threads, dtype):
    feats, probs, weights = ce_head_problem(2, 9, 5, 3, dtype)
    v = torch.randn(2, 2, 3, 5, dtype=dtype)
    torch.testing.assert_close(EMULATE.ce_head_hvp(feats, probs, v, 0.2, weights, threads),
                               ops.ce_head_hvp(feats, probs, v, 0.2, weights), **tol(dtype))
    torch.testing.assert_close(EMULATE.neumann_ce_head(feats, probs, weights, v, None, 60, 0.2, None, threads),
                               ops.neumann_ce_head(feats, probs, v, 60, None, 0.2, weights), **tol(dtype))
    got, want = EMULATE.cg_ce_head(feats, probs, weights, v, 0.2, 1e-6, 200, threads), \
        ops.cg_ce_head(feats, probs, v, 0.2, 1e-6, 200, weights)
    torch.testing.assert_close(got[0], want.x, **tol(dtype))
    assert got[2].max() <= 1e-6


def test_cg_replaces_the_residual_and_stops_at_maxiter_like_the_cpu_kernel():
    """An ill-conditioned operator: over 50 iterations (residual replacements), and a cap."""
    q = 80
    basis = torch.linalg.qr(torch.randn(q, q, dtype=torch.float64))[0]
    a = ((basis * torch.logspace(0, 4, q, dtype=torch.float64)) @ basis.T)[None]
    b = torch.randn(1, 1, q, dtype=torch.float64)
    for threads in TEAMS:
        got, want = EMULATE.cg_dense(a, b, 0.0, 1e-10, 600, threads), ops.cg_dense(a, b, 0.0, 1e-10, 600)
        # rounding differs (other summation orders), and with it the count, by a few per cent
        assert got[1].item() > 50 and abs(got[1].item() - want.iters.item()) <= 0.05 * want.iters.item()
        assert got[2].item() <= 1e-10 and want.resid.item() <= 1e-10
        assert (got[0] - want.x).norm() <= 1e-6 * want.x.norm()  # condition number 1e4 times rtol
        capped = EMULATE.cg_dense(a, b, 0.0, 1e-10, 7, threads)
        assert capped[1].item() == 7
        torch.testing.assert_close(capped[2], ops.cg_dense(a, b, 0.0, 1e-10, 7).resid)


@pytest.mark.parametrize("threads", TEAMS)
def test_failures_raise_the_cpu_kernels_message(threads):
    a, b = spd(2, 6, torch.float64), torch.randn(2, 1, 6, dtype=torch.float64)
    calls = [
        (lambda impl: impl.cg_dense(-a, b, 0.0, 1e-8, 20), "non-positive curvature p.Ap = .* in task 0"),
        (lambda impl: impl.neumann_dense(a, b, 200, scales(2, 0.2), 0.0), "diverges in task 0, column 0"),
        (lambda impl: impl.neumann_dense(-a, b, 5, None, 0.0), "estimates the top eigenvalue .* in task 0"),
        (lambda impl: impl.neumann_dense(a, b, 5, torch.tensor([1.0, -1.0], dtype=torch.float64), 0.0),
         r"1 / scale is not a finite positive number in task 1 \(scale -1\)"),
        (lambda impl: impl.neumann_dense(a, b * float("nan"), 5, None, 0.0), "b has non-finite values in task 0"),
        (lambda impl: impl.neumann_dense(a, b, 3, None, 0.0, 1e-12), "relative residual in task 0, column 0"),
    ]

    class Emulated:
        def cg_dense(self, a, b, damping, rtol, maxiter):
            return EMULATE.cg_dense(a, b, damping, rtol, maxiter, threads)

        def neumann_dense(self, a, b, iters, scale, damping, rtol=None):
            return EMULATE.neumann_dense(a, b, scale, iters, damping, rtol, threads)

    for call, message in calls:
        for impl in (ops, Emulated()):
            with pytest.raises(RuntimeError, match=message):
                call(impl)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gathered_patch_terms_match_the_cpu_kernels(dtype):
    gen = torch.Generator().manual_seed(0)
    cols = torch.randn(3, 10, 4, generator=gen, dtype=dtype)
    index = torch.randint(0, 10, (3, 5, 6), generator=gen)
    mask = (torch.rand(3, 5, 6, generator=gen) > 0.3).to(dtype)
    weight, signal = torch.randn(6, 4, generator=gen, dtype=dtype), torch.randn(3, 5, 6, generator=gen, dtype=dtype)
    torch.testing.assert_close(EMULATE.gather_patch_matmul(cols, index, mask, weight),
                               ops.gather_patch_matmul(cols, index, mask, weight), **tol(dtype))
    torch.testing.assert_close(EMULATE.gather_patch_matmul_t(cols, index, mask, signal),
                               ops.gather_patch_matmul_t(cols, index, mask, signal), **tol(dtype))
    index[1, 2, 3] = 10
    for op in (EMULATE.gather_patch_matmul, ops.gather_patch_matmul):
        with pytest.raises(RuntimeError, match=r"index values must lie in \[0, cols.shape\[1\]\) = \[0, 10\)"):
            op(cols, index, mask, weight)
