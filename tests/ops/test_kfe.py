import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metaif import ops, reference
from tests.helpers import noncontiguous, orthogonal, tol

DTYPES = [torch.float64, torch.float32]


def kfe_problem(batch, d_out, d_in, dtype):
    grads = torch.randn(*batch, d_out, d_in, dtype=dtype)
    return grads, orthogonal(d_out, dtype), orthogonal(d_in, dtype), torch.rand(d_out, d_in, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3), (0,)])
def test_kfe_ihvp_matches_reference(dtype, batch):
    grads, q_out, q_in, eig = kfe_problem(batch, 6, 9, dtype)
    out = ops.kfe_ihvp(grads, q_out, q_in, eig, 0.1)
    assert out.shape == grads.shape and out.dtype == dtype
    torch.testing.assert_close(out, reference.kfe_ihvp(grads, q_out, q_in, eig, 0.1), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kfe_ihvp_noncontiguous_inputs(dtype):
    grads, q_out, q_in, eig = kfe_problem((4,), 7, 5, dtype)
    args = [noncontiguous(t) for t in (grads, q_out, q_in, eig)]
    torch.testing.assert_close(ops.kfe_ihvp(*args, 0.2), reference.kfe_ihvp(grads, q_out, q_in, eig, 0.2), **tol(dtype))


@pytest.mark.parametrize("layout", ["row-major", "column-major", "strided"])
def test_kfe_ihvp_basis_layouts(layout):
    """Bases from torch.linalg.eigh/qr are column-major: they are read in place, not copied."""
    grads, q_out, q_in, eig = kfe_problem((3,), 6, 4, torch.float64)
    expected = reference.kfe_ihvp(grads, q_out, q_in, eig, 0.1)
    convert = {"row-major": lambda q: q.contiguous(), "column-major": lambda q: q.mT.contiguous().mT,
               "strided": noncontiguous}[layout]
    torch.testing.assert_close(ops.kfe_ihvp(grads, convert(q_out), convert(q_in), eig, 0.1), expected, **tol(torch.float64))


@settings(max_examples=25, deadline=None)
@given(d_out=st.integers(1, 12), d_in=st.integers(1, 12), batch=st.lists(st.integers(0, 3), max_size=2),
       damping=st.floats(1e-3, 10.0))
def test_kfe_ihvp_shapes_property(d_out, d_in, batch, damping):
    grads, q_out, q_in, eig = kfe_problem(tuple(batch), d_out, d_in, torch.float64)
    torch.testing.assert_close(ops.kfe_ihvp(grads, q_out, q_in, eig, damping),
                               reference.kfe_ihvp(grads, q_out, q_in, eig, damping), **tol(torch.float64))


def test_kfac_eigvals_invert_the_kronecker_product():
    """With eigvals = outer(lambda_S, lambda_A), kfe_ihvp inverts V -> S V A + mu V exactly."""
    d_out, d_in, mu = 5, 4, 0.3
    s_fac = torch.randn(d_out, d_out, dtype=torch.float64)
    s_fac = s_fac @ s_fac.T
    a_fac = torch.randn(d_in, d_in, dtype=torch.float64)
    a_fac = a_fac @ a_fac.T
    lam_s, q_s = torch.linalg.eigh(s_fac)
    lam_a, q_a = torch.linalg.eigh(a_fac)
    grads = torch.randn(3, d_out, d_in, dtype=torch.float64)
    x = ops.kfe_ihvp(grads, q_s, q_a, torch.outer(lam_s, lam_a), mu)
    torch.testing.assert_close(s_fac @ x @ a_fac + mu * x, grads, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_equals_per_layer(dtype):
    layers = [kfe_problem((2,), 3, 4, dtype), kfe_problem((), 8, 5, dtype), kfe_problem((2, 2), 1, 6, dtype)]
    outs = ops.kfe_ihvp_grouped(*[list(col) for col in zip(*layers)], damping=0.05)
    for out, layer in zip(outs, layers):
        torch.testing.assert_close(out, ops.kfe_ihvp(*layer, 0.05), rtol=0, atol=0)
    assert ops.kfe_ihvp_grouped([], [], [], []) == []


def test_kfe_ihvp_gradcheck():
    grads, q_out, q_in, eig = kfe_problem((2,), 3, 4, torch.float64)
    grads.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda g: ops.kfe_ihvp(g, q_out, q_in, eig, 0.1), (grads,))
    layer = [grads, q_out, q_in, eig]
    assert torch.autograd.gradcheck(
        lambda g: ops.kfe_ihvp_grouped([g, g * 2], [q_out] * 2, [q_in] * 2, [eig] * 2, 0.1)[1], (grads,))
    assert layer[0].requires_grad


def test_kfe_ihvp_refuses_gradient_in_the_basis():
    grads, q_out, q_in, eig = kfe_problem((2,), 3, 4, torch.float64)
    with pytest.raises(RuntimeError, match="differentiable only in grads; eigvals"):
        ops.kfe_ihvp(grads, q_out, q_in, eig.requires_grad_(True), 0.1)


def test_kfe_ihvp_opcheck():
    grads, q_out, q_in, eig = kfe_problem((2,), 3, 4, torch.float64)
    torch.library.opcheck(torch.ops.metaif.kfe_ihvp.default, (grads.requires_grad_(True), q_out, q_in, eig, 0.1))
    torch.library.opcheck(torch.ops.metaif.kfe_ihvp_grouped.default,
                          ([grads], [q_out], [q_in], [eig], 0.1))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(q_out=a["q_out"][:2]), r"q_out\.shape\[0\] must equal grads\.shape\[-2\]"),
        (lambda a: a.update(eigvals=a["eigvals"].T), r"eigvals\.shape\[0\] must equal"),
        (lambda a: a.update(grads=a["grads"][0, 0]), r"grads must have shape \[\.\.\., d_out, d_in\]"),
        (lambda a: a.update(q_in=a["q_in"].float()), "q_in has dtype Float but grads has Double"),
        (lambda a: a.update(grads=a["grads"].int()), "grads must be float32 or float64"),
        (lambda a: a.update(damping=float("nan")), "damping must be finite"),
        (lambda a: a.update(damping=-1.0), "damping must be >= 0"),
        (lambda a: a.update(eigvals=a["eigvals"] - 5.0), "eigvals \\+ damping must be positive"),
    ],
)
def test_kfe_ihvp_bad_input(mutate, message):
    grads, q_out, q_in, eig = kfe_problem((2,), 3, 4, torch.float64)
    args = dict(grads=grads, q_out=q_out, q_in=q_in, eigvals=eig, damping=0.1)
    mutate(args)
    with pytest.raises(RuntimeError, match=message):
        ops.kfe_ihvp(**args)


def test_grouped_names_the_failing_layer():
    good = kfe_problem((), 3, 4, torch.float64)
    bad = kfe_problem((), 3, 4, torch.float64)
    with pytest.raises(RuntimeError, match="layer 1: kfe_ihvp: q_in"):
        ops.kfe_ihvp_grouped([good[0], bad[0]], [good[1], bad[1]], [good[2], bad[2][:2]], [good[3], bad[3]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("positions", [1, 4])
@pytest.mark.parametrize("weighted", [False, True])
def test_kfe_eigvals_matches_reference(dtype, positions, weighted):
    n, d_out, d_in = 11, 6, 5
    out_grads = torch.randn(n, positions, d_out, dtype=dtype)
    acts = torch.randn(n, positions, d_in, dtype=dtype)
    q_out, q_in = orthogonal(d_out, dtype), orthogonal(d_in, dtype)
    w = torch.rand(n, dtype=dtype) if weighted else None
    expected = reference.kfe_eigvals(out_grads, acts, q_out, q_in, w)
    torch.testing.assert_close(ops.kfe_eigvals(out_grads, acts, q_out, q_in, w), expected, **tol(dtype))
    torch.testing.assert_close(
        ops.kfe_eigvals(noncontiguous(out_grads), noncontiguous(acts), q_out, q_in, w), expected, **tol(dtype))


def test_kfe_eigvals_empty_and_errors():
    q_out, q_in = orthogonal(3, torch.float64), orthogonal(2, torch.float64)
    empty = ops.kfe_eigvals(torch.zeros(0, 1, 3, dtype=torch.float64), torch.zeros(0, 1, 2, dtype=torch.float64),
                            q_out, q_in)
    assert empty.shape == (3, 2) and not empty.any()
    with pytest.raises(RuntimeError, match=r"acts\.shape\[1\] must equal out_grads\.shape\[1\]"):
        ops.kfe_eigvals(torch.zeros(4, 2, 3, dtype=torch.float64), torch.zeros(4, 1, 2, dtype=torch.float64),
                        q_out, q_in)
    with pytest.raises(RuntimeError, match=r"weights must have shape \[n\]"):
        ops.kfe_eigvals(torch.zeros(4, 1, 3, dtype=torch.float64), torch.zeros(4, 1, 2, dtype=torch.float64),
                        q_out, q_in, torch.ones(3, dtype=torch.float64))


def test_kfe_eigvals_opcheck():
    out_grads, acts = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(5, 2, 4, dtype=torch.float64)
    args = (out_grads, acts, orthogonal(3, torch.float64), orthogonal(4, torch.float64))
    torch.library.opcheck(torch.ops.metaif.kfe_eigvals.default, (*args, None))
    torch.library.opcheck(torch.ops.metaif.kfe_eigvals.default, (*args, torch.rand(5, dtype=torch.float64)))
