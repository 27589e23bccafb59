"""The CUDA kernels and the pipeline on a GPU (skipped where there is none, or where this build of
metaif has no CUDA kernels): every op against its CPU kernel and :mod:`metaif.reference`, the
op contracts (opcheck, torch.compile, device mismatches, failures), and the analyzer's removal
predictions on CUDA against the CPU's, with no host synchronisation in the product loop."""

import pytest
import torch

from metaif import ops, reference
from metaif.influence import InfluenceAnalyzer, InfluenceConfig, SolverConfig
from metaif.meta import AnilConfig, AnilProblem
from metaif.models import conv4
from tests.helpers import ce_head_problem, orthogonal, spd, tol
from tests.ops.test_compile import all_ops, all_ops_inputs
from tests.test_device_placement import image_tasks

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and ops.has_kernels("cuda")),
                                reason="needs a GPU and metaif built with its CUDA kernels")

DTYPES = [torch.float64, torch.float32]
CUDA = "cuda"


def both(*tensors):
    """The inputs on the CPU and on the GPU."""
    return tensors, tuple(t.to(CUDA) if isinstance(t, torch.Tensor) else t for t in tensors)


def assert_same(cuda_out, cpu_out, dtype):
    torch.testing.assert_close(cuda_out.cpu(), cpu_out, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kfe_ops_match_the_cpu_kernels_and_the_reference(dtype):
    grads, q_out, q_in = torch.randn(3, 6, 7, dtype=dtype), orthogonal(6, dtype), orthogonal(7, dtype)
    eig = torch.rand(6, 7, dtype=dtype) + 0.1
    cpu, gpu = both(grads, q_out, q_in, eig)
    assert_same(ops.kfe_ihvp(*gpu, 0.1), ops.kfe_ihvp(*cpu, 0.1), dtype)
    assert_same(ops.kfe_ihvp(*gpu, 0.1), reference.kfe_ihvp(*cpu, 0.1), dtype)
    grouped = ops.kfe_ihvp_grouped([gpu[0], 2 * gpu[0]], [gpu[1]] * 2, [gpu[2]] * 2, [gpu[3]] * 2, 0.1)
    assert_same(grouped[1], ops.kfe_ihvp(2 * grads, q_out, q_in, eig, 0.1), dtype)
    for positions in (1, 4):  # one position per example (one GEMM) and several (per-example tiles)
        og, acts = torch.randn(9, positions, 6, dtype=dtype), torch.randn(9, positions, 7, dtype=dtype)
        w = torch.rand(9, dtype=dtype)
        cpu, gpu = both(og, acts, q_out, q_in, w)
        assert_same(ops.kfe_eigvals(*gpu), ops.kfe_eigvals(*cpu), dtype)
        assert_same(ops.kfe_eigvals(*gpu), reference.kfe_eigvals(*cpu), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [5, 1601])  # shared memory, and a global workspace (q = 5 * 1601)
def test_ce_head_ops_match_the_cpu_kernels(dtype, d):
    feats, probs, weights = ce_head_problem(3, 25, d, 5, dtype)
    b = torch.randn(3, 2, 5, d, dtype=dtype)
    cpu, gpu = both(feats, probs, b, weights)
    assert_same(ops.ce_head_hvp(gpu[0], gpu[1], gpu[2], 0.1, gpu[3]), ops.ce_head_hvp(*cpu[:3], 0.1, cpu[3]), dtype)
    assert_same(ops.ce_head_hvp(gpu[0], gpu[1], gpu[2], 0.1, gpu[3]),
                reference.ce_head_hvp(*cpu[:3], 0.1, cpu[3]), dtype)
    assert_same(ops.neumann_ce_head(gpu[0], gpu[1], gpu[2], 30, None, 0.5, gpu[3]),
                ops.neumann_ce_head(cpu[0], cpu[1], cpu[2], 30, None, 0.5, cpu[3]), dtype)
    got, want = ops.cg_ce_head(gpu[0], gpu[1], gpu[2], 0.5, 1e-5, 200, gpu[3]), \
        ops.cg_ce_head(cpu[0], cpu[1], cpu[2], 0.5, 1e-5, 200, cpu[3])
    assert bool(got.converged.all()) and got.resid.max().item() <= 1e-5
    torch.testing.assert_close(got.x.cpu(), want.x, rtol=1e-3, atol=1e-4 * want.x.abs().max().item())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("q", [13, 325, 1500])  # 1500: the vectors leave shared memory
def test_dense_solvers_match_the_cpu_kernels(dtype, q):
    a, b = spd(4, q, dtype), torch.randn(4, 2, q, dtype=dtype)
    cpu, gpu = both(a, b)
    for scale in (None, torch.full((4,), 5.0, dtype=torch.float64)):
        assert_same(ops.neumann_dense(gpu[0], gpu[1], 50, None if scale is None else scale.to(CUDA), 0.1),
                    ops.neumann_dense(cpu[0], cpu[1], 50, scale, 0.1), dtype)
    got, want = ops.cg_dense(gpu[0], gpu[1], 0.1, 1e-5), ops.cg_dense(cpu[0], cpu[1], 0.1, 1e-5)
    assert got.resid.max().item() <= 1e-5 and (got.iters.cpu() - want.iters).abs().max() <= 2
    assert_same(got.x, reference.cg_dense(*cpu, 0.1, 1e-10).x, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ggn_and_patch_ops_match_the_cpu_kernels(dtype):
    _, probs, weights = ce_head_problem(2, 6, 1, 3, dtype)
    jac, vecs = torch.randn(2, 6, 3, 11, dtype=dtype), torch.randn(2, 4, 11, dtype=dtype)
    cpu, gpu = both(jac, probs, vecs, weights)
    assert_same(ops.ggn_hvp(gpu[0], gpu[1], gpu[2], 0.1, gpu[3]), ops.ggn_hvp(*cpu[:3], 0.1, cpu[3]), dtype)
    gen = torch.Generator().manual_seed(0)
    cols = torch.randn(20, 30, 10, generator=gen, dtype=dtype)
    index = torch.randint(0, 30, (20, 12, 8), generator=gen)
    mask = (torch.rand(20, 12, 8, generator=gen) > 0.3).to(dtype)
    weight, signal = torch.randn(8, 10, dtype=dtype), torch.randn(20, 12, 8, dtype=dtype)
    cpu, gpu = both(cols, index, mask, weight, signal)
    assert_same(ops.gather_patch_matmul(*gpu[:4]), ops.gather_patch_matmul(*cpu[:4]), dtype)
    assert_same(ops.gather_patch_matmul_t(*gpu[:3], gpu[4]), ops.gather_patch_matmul_t(*cpu[:3], cpu[4]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_sum_ops_keep_the_cpu_kernels_limbs_and_values(dtype):
    gen = torch.Generator().manual_seed(0)
    state = (torch.zeros(3, 100, 10, dtype=torch.int64), torch.full((100, 10), -(2 ** 20), dtype=torch.int32))
    on_gpu = tuple(t.to(CUDA) for t in state)
    for scale in (1e-20, 1.0, 1e25):
        x = torch.randn(100, 10, generator=gen, dtype=dtype) * scale
        rows = torch.randint(0, 100, (60,), generator=gen)  # repeated rows, added as often
        ops.exact_add(*state, x)
        ops.exact_add(*on_gpu, x.to(CUDA))
        ops.exact_add(*state, x * 3, rows)
        ops.exact_add(*on_gpu, (x * 3).to(CUDA), rows.to(CUDA))
    assert torch.equal(on_gpu[0].cpu(), state[0]) and torch.equal(on_gpu[1].cpu(), state[1])
    value, value_gpu = torch.empty(100, 10, dtype=dtype), torch.empty(100, 10, dtype=dtype, device=CUDA)
    ops.exact_value(*state, value)
    ops.exact_value(*on_gpu, value_gpu)
    assert torch.equal(value_gpu.cpu(), value) and torch.equal(on_gpu[0].cpu(), state[0])
    with pytest.raises(RuntimeError, match=r"rows\[1\] = 100 is not a row of x \(100 rows\)"):
        ops.exact_add(*on_gpu, x.to(CUDA), torch.tensor([0, 100], device=CUDA))


def test_failures_raise_the_cpu_kernels_messages():
    a, b = spd(2, 6, torch.float64).to(CUDA), torch.randn(2, 1, 6, dtype=torch.float64, device=CUDA)
    with pytest.raises(RuntimeError, match="non-positive curvature p.Ap = .* in task"):
        ops.cg_dense(-a, b, 0.0, 1e-8, 20)
    with pytest.raises(RuntimeError, match="diverges in task"):
        ops.neumann_dense(a, b, 200, torch.full((2,), 0.2, dtype=torch.float64, device=CUDA))
    with pytest.raises(RuntimeError, match=r"1 / scale is not a finite positive number in task 1 \(scale -1\)"):
        ops.neumann_dense(a, b, 5, torch.tensor([1e3, -1.0], dtype=torch.float64, device=CUDA))
    with pytest.raises(RuntimeError, match="b has non-finite values"):
        ops.cg_dense(a, b * float("nan"), 0.1, 1e-8, 20)
    with pytest.raises(RuntimeError, match="eigvals \\+ damping must be positive and finite everywhere"):
        ops.kfe_ihvp(torch.randn(2, 3, 3, device=CUDA), torch.eye(3, device=CUDA), torch.eye(3, device=CUDA),
                     -torch.ones(3, 3, device=CUDA), 0.1)
    with pytest.raises(RuntimeError, match="b is on cpu but a is on cuda"):
        ops.cg_dense(a, b.cpu(), 0.1, 1e-8, 20)
    ops.cg_dense(a, b, 0.1, 1e-8, 20)  # the device is still usable after the failures


def test_opcheck_and_compile_on_cuda():
    inputs = all_ops_inputs()
    gpu = tuple(t.to(CUDA) for t in inputs)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(all_ops, fullgraph=True)(*gpu), all_ops(*gpu))
    m = torch.ops.metaif
    torch.library.opcheck(m.ce_head_hvp.default, (gpu[6], gpu[7], gpu[9].requires_grad_(True), 0.1, gpu[8]))
    torch.library.opcheck(m.neumann_dense.default, (gpu[12], gpu[13], gpu[14], 10, 0.1, None))
    torch.library.opcheck(m.cg_dense.default, (gpu[12], gpu[13], 0.1, 1e-8, 50))
    torch.library.opcheck(m.kfe_ihvp.default, (gpu[0], gpu[1], gpu[2], gpu[3], 0.1))


def conv_problem():
    problem = AnilProblem(conv4(1, 8, 16), AnilConfig(ways=3))
    return problem, problem.init_lambda(0, torch.float64), image_tasks(6, 0)


def test_the_analyzer_on_cuda_equals_the_cpu_one():
    problem, lam, tasks = conv_problem()
    # at this untrained lambda the total Hessian's smallest eigenvalue is about -11
    config = InfluenceConfig(solver=SolverConfig(method="cg", damping=15.0, rtol=1e-10, max_iter=500), chunk=4)
    cpu = InfluenceAnalyzer(problem, lam, tasks, config=config)
    gpu = InfluenceAnalyzer(problem, lam.to(CUDA), tasks, config=config)
    for got, want in ((gpu.task_influence(), cpu.task_influence()),
                      (gpu.val_influence([(0, 1), (4, 2)]), cpu.val_influence([(0, 1), (4, 2)])),
                      (gpu.train_influence([(1, 0)]), cpu.train_influence([(1, 0)]))):
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), want, rtol=1e-7, atol=1e-9 * want.abs().max().item())


def test_total_hessian_products_do_not_synchronise():
    problem, lam, tasks = conv_problem()
    analyzer = InfluenceAnalyzer(problem, lam.to(CUDA), tasks, config=InfluenceConfig(chunk=2))
    v = torch.randn_like(analyzer.lam)
    analyzer.hvp(v)  # the first product derives what the later ones reuse
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for variant in ("exact", "gn", "exact"):
            analyzer.hvp(v, variant)
    finally:
        torch.cuda.set_sync_debug_mode("default")
