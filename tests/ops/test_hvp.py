import pytest
import torch

from metaif import ops, reference
from tests.helpers import ce_head_problem, noncontiguous, tol

DTYPES = [torch.float64, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("tasks, batch", [(3, 2), (1, 1), (0, 2), (2, 0)])
def test_ce_head_hvp_matches_autograd(dtype, weighted, tasks, batch):
    feats, probs, weights = ce_head_problem(tasks, 7, 5, 4, dtype, weighted)
    vecs = torch.randn(tasks, batch, 4, 5, dtype=dtype)
    out = ops.ce_head_hvp(feats, probs, vecs, 0.25, weights)
    assert out.shape == vecs.shape
    if out.numel():
        torch.testing.assert_close(out, reference.ce_head_hvp(feats, probs, vecs, 0.25, weights), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, d, classes", [(21, 37, 5), (16, 32, 2), (33, 8, 7), (1, 65, 3)])
def test_ce_head_hvp_vector_blocks_and_ragged_ends(dtype, n, d, classes):
    """Sizes around the SIMD width: whole blocks, ragged feature rows, padded examples."""
    feats, probs, weights = ce_head_problem(2, n, d, classes, dtype)
    vecs = torch.randn(2, 3, classes, d, dtype=dtype)
    torch.testing.assert_close(ops.ce_head_hvp(feats, probs, vecs, 0.1, weights),
                               reference.ce_head_matvec(feats, probs, vecs, 0.1, weights), **tol(dtype))


def test_ce_head_closed_form_baseline_matches_autograd():
    feats, probs, weights = ce_head_problem(3, 6, 5, 3, torch.float64)
    vecs = torch.randn(3, 2, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(reference.ce_head_matvec(feats, probs, vecs, 0.1, weights),
                               reference.ce_head_hvp(feats, probs, vecs, 0.1, weights))


def test_ce_head_hvp_is_the_hessian_of_the_real_loss():
    """Against torch.autograd.functional.hessian of the labelled cross-entropy of a head."""
    n, d, classes = 6, 4, 3
    feats = torch.randn(n, d, dtype=torch.float64)
    labels = torch.randint(classes, (n,))
    theta = torch.randn(classes, d, dtype=torch.float64)

    def loss(th):
        return torch.nn.functional.cross_entropy(feats @ th.T, labels)

    hess = torch.autograd.functional.hessian(loss, theta).reshape(classes * d, classes * d)
    probs = torch.softmax(feats @ theta.T, -1)
    vec = torch.randn(classes, d, dtype=torch.float64)
    out = ops.ce_head_hvp(feats[None], probs[None], vec[None, None])[0, 0]
    torch.testing.assert_close(out.reshape(-1), hess @ vec.reshape(-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ce_head_hvp_noncontiguous(dtype):
    feats, probs, weights = ce_head_problem(2, 5, 4, 3, dtype)
    vecs = torch.randn(2, 3, 3, 4, dtype=dtype)
    out = ops.ce_head_hvp(noncontiguous(feats), noncontiguous(probs), noncontiguous(vecs), 0.0, noncontiguous(weights))
    torch.testing.assert_close(out, reference.ce_head_hvp(feats, probs, vecs, 0.0, weights), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_ggn_hvp_matches_autograd(dtype, weighted):
    tasks, n, classes, params = 3, 5, 4, 9
    jac = torch.randn(tasks, n, classes, params, dtype=dtype)
    _, probs, weights = ce_head_problem(tasks, n, 1, classes, dtype, weighted)
    vecs = torch.randn(tasks, 2, params, dtype=dtype)
    expected = reference.ggn_hvp(jac, probs, vecs, 0.5, weights)
    torch.testing.assert_close(ops.ggn_hvp(jac, probs, vecs, 0.5, weights), expected, **tol(dtype))
    torch.testing.assert_close(ops.ggn_hvp(noncontiguous(jac), probs, noncontiguous(vecs), 0.5, weights), expected,
                               **tol(dtype))


def test_ggn_of_a_linear_head_equals_ce_head_hvp():
    """A linear head's logit Jacobian is I_C (x) phi: the GGN must equal the exact head Hessian."""
    tasks, n, d, classes = 2, 5, 3, 4
    feats, probs, weights = ce_head_problem(tasks, n, d, classes, torch.float64)
    jac = torch.einsum("ce,tnd->tnced", torch.eye(classes, dtype=torch.float64), feats).reshape(tasks, n, classes, -1)
    vecs = torch.randn(tasks, 2, classes, d, dtype=torch.float64)
    torch.testing.assert_close(ops.ggn_hvp(jac, probs, vecs.flatten(2), 0.1, weights),
                               ops.ce_head_hvp(feats, probs, vecs, 0.1, weights).flatten(2))


def test_gradcheck_and_opcheck():
    feats, probs, weights = ce_head_problem(2, 4, 3, 3, torch.float64)
    vecs = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ops.ce_head_hvp(feats, probs, v, 0.1, weights), (vecs,))
    jac = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    gv = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ops.ggn_hvp(jac, probs, v, 0.1, weights), (gv,))
    torch.library.opcheck(torch.ops.metaif.ce_head_hvp.default, (feats, probs, vecs, 0.1, weights))
    torch.library.opcheck(torch.ops.metaif.ce_head_hvp.default, (feats, probs, vecs, 0.0, None))
    torch.library.opcheck(torch.ops.metaif.ggn_hvp.default, (jac, probs, gv, 0.1, weights))


def test_refuses_gradient_in_the_operator():
    feats, probs, _ = ce_head_problem(2, 4, 3, 3, torch.float64)
    vecs = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="differentiable only in vecs; feats requires grad"):
        ops.ce_head_hvp(feats.requires_grad_(True), probs, vecs)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(vecs=a["vecs"][:, :, :2]), r"vecs\.shape\[2\] must equal probs\.shape\[2\] \(C\)"),
        (lambda a: a.update(probs=a["probs"][:1]), r"probs\.shape\[0\] must equal feats\.shape\[0\] \(T\)"),
        (lambda a: a.update(vecs=a["vecs"][0]), r"vecs must have shape \[T, B, C, d\]"),
        (lambda a: a.update(weights=a["weights"][:, :2]), r"weights must have shape \[T, n\]"),
        (lambda a: a.update(probs=a["probs"].float()), "probs has dtype Float but feats has Double"),
        (lambda a: a.update(damping=float("inf")), "damping must be finite"),
    ],
)
def test_ce_head_hvp_bad_input(mutate, message):
    feats, probs, weights = ce_head_problem(2, 4, 3, 3, torch.float64)
    args = dict(feats=feats, probs=probs, vecs=torch.randn(2, 1, 3, 3, dtype=torch.float64), damping=0.1,
                weights=weights)
    mutate(args)
    with pytest.raises(RuntimeError, match=message):
        ops.ce_head_hvp(**args)


def test_ggn_hvp_bad_input():
    jac = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    probs = torch.rand(2, 4, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"vecs\.shape\[2\] must equal jac\.shape\[3\] \(P\)"):
        ops.ggn_hvp(jac, probs, torch.randn(2, 1, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"jac must have shape \[T, n, C, P\]"):
        ops.ggn_hvp(jac[0], probs, torch.randn(2, 1, 5, dtype=torch.float64))
