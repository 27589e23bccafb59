"""Woodbury solves against dense solves, the few-shot GGN and gradcheck; inputs it refuses."""

import pytest
import torch

from metaif import ops, reference
from metaif.linalg import woodbury_solve


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-3)])
def test_woodbury_matches_dense_solve(dtype, rtol):
    u = torch.randn(3, 40, 6, dtype=dtype)
    v = torch.randn(3, 4, 40, dtype=dtype)
    torch.testing.assert_close(woodbury_solve(u, v, 0.3), reference.woodbury_solve(u, v, 0.3), rtol=rtol, atol=rtol)


def test_woodbury_inverts_a_few_shot_ggn():
    """U = J^T (diag p - p p^T)^{1/2} per example: (mu I + U U^T) equals the damped GGN."""
    tasks, n, classes, params = 2, 5, 3, 30
    jac = torch.randn(tasks, n, classes, params, dtype=torch.float64)
    probs = torch.softmax(torch.randn(tasks, n, classes, dtype=torch.float64), -1)
    h = torch.diag_embed(probs) - probs[..., :, None] * probs[..., None, :]
    evals, evecs = torch.linalg.eigh(h)
    root = evecs @ torch.diag_embed(evals.clamp_min(0).sqrt()) @ evecs.mT
    u = torch.einsum("tncp,tncd->tpnd", jac, root).reshape(tasks, params, n * classes) / n**0.5
    v = torch.randn(tasks, 2, params, dtype=torch.float64)
    x = woodbury_solve(u, v, 0.2)
    torch.testing.assert_close(ops.ggn_hvp(jac, probs, x, 0.2), v)


def test_woodbury_gradcheck_and_errors():
    u = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: woodbury_solve(a, b, 0.5), (u, v))
    with pytest.raises(ValueError, match="damping must be finite and > 0"):
        woodbury_solve(u, v, 0.0)
    with pytest.raises(ValueError, match=r"v must have shape \[T, B, P\] = \[2, B, 6\]"):
        woodbury_solve(u, v[..., :5], 0.5)
    with pytest.raises(ValueError, match="must share dtype"):
        woodbury_solve(u, v.float(), 0.5)
    assert woodbury_solve(u, torch.zeros(2, 0, 6, dtype=torch.float64), 0.5).shape == (2, 0, 6)
