"""Every op traces under torch.compile(fullgraph=True) through its fake kernel and gives the eager result."""

import pytest
import torch

from metaif import ops
from metaif.linalg import woodbury_solve
from tests.helpers import ce_head_problem, orthogonal, spd


def all_ops(grads, q_out, q_in, eig, out_grads, acts, feats, probs, weights, vecs, jac, gvecs, a, b, scale, u):
    return (
        ops.kfe_ihvp(grads, q_out, q_in, eig, 0.1),
        ops.kfe_ihvp_grouped([grads, grads * 2], [q_out] * 2, [q_in] * 2, [eig] * 2, 0.1),
        ops.kfe_eigvals(out_grads, acts, q_out, q_in, None),
        ops.ce_head_hvp(feats, probs, vecs, 0.1, weights),
        ops.ggn_hvp(jac, probs, gvecs, 0.1, weights),
        ops.neumann_dense(a, b, 10, scale, 0.1),
        ops.neumann_dense(a, b, 10, None, 0.1),  # the scale estimated inside the kernel
        ops.neumann_ce_head(feats, probs, vecs, 10, scale, 0.1, weights),
        ops.cg_dense(a, b, 0.1, 1e-8, 50),
        ops.cg_ce_head(feats, probs, vecs, 0.1, 1e-8, 50, weights),
        woodbury_solve(u, gvecs, 0.5),
    )


def all_ops_inputs(dt: torch.dtype = torch.float64) -> tuple:
    """Small valid arguments of :func:`all_ops`, in its order."""
    feats, probs, weights = ce_head_problem(2, 5, 4, 3, dt)
    return (
        torch.randn(3, 4, 5, dtype=dt), orthogonal(4, dt), orthogonal(5, dt), torch.rand(4, 5, dtype=dt),
        torch.randn(6, 2, 4, dtype=dt), torch.randn(6, 2, 5, dtype=dt),
        feats, probs, weights, torch.randn(2, 2, 3, 4, dtype=dt),
        torch.randn(2, 5, 3, 7, dtype=dt), torch.randn(2, 2, 7, dtype=dt),
        spd(2, 6, dt), torch.randn(2, 2, 6, dtype=dt), torch.full((2,), 5.0, dtype=dt), torch.randn(2, 7, 3, dtype=dt),
    )


@pytest.mark.slow
def test_compiled_equals_eager():
    inputs = all_ops_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(all_ops, fullgraph=True)
    torch.testing.assert_close(compiled(*inputs), all_ops(*inputs))
