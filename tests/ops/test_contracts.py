"""The ops' contracts at their edges: mixed devices raise naming the argument (a fake kernel must
not hand back uninitialised memory), non-differentiable outputs say so, inputs of the wrong kind
are refused, and the fake kernels check what the CPU kernels check."""

import numpy as np
import pytest
import torch

from metaif import ops, reference
from metaif.linalg import woodbury_solve
from tests.helpers import ce_head_problem, orthogonal, spd

META = torch.device("meta")


def test_a_meta_tensor_among_cpu_inputs_raises_naming_it():
    a, b = spd(2, 4, torch.float64), torch.randn(2, 1, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="scale is on meta but b is on cpu"):
        ops.neumann_dense(a, b, 3, torch.ones(2, dtype=torch.float64, device=META))
    feats, probs, weights = ce_head_problem(2, 3, 4, 3, torch.float64)
    with pytest.raises(RuntimeError, match="scale is on meta"):
        ops.neumann_ce_head(feats, probs, torch.randn(2, 1, 3, 4, dtype=torch.float64), 3,
                            torch.ones(2, dtype=torch.float64, device=META), 0.1)
    og, acts = torch.randn(5, 1, 3, dtype=torch.float64), torch.randn(5, 1, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="weights is on meta but out_grads is on cpu"):
        ops.kfe_eigvals(og, acts, orthogonal(3, torch.float64), orthogonal(4, torch.float64),
                        torch.ones(5, dtype=torch.float64, device=META))
    jac, vecs = torch.randn(2, 3, 3, 5, dtype=torch.float64), torch.randn(2, 1, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="weights is on meta but jac is on cpu"):
        ops.ggn_hvp(jac, probs, vecs, 0.1, torch.ones(2, 3, dtype=torch.float64, device=META))
    cols, mask = torch.randn(2, 5, 3), torch.ones(2, 2, 4)
    with pytest.raises(RuntimeError, match="index is on meta but cols is on cpu"):
        ops.gather_patch_matmul(cols, torch.zeros(2, 2, 4, dtype=torch.long, device=META), mask, torch.randn(4, 3))


def test_outputs_that_are_not_differentiable_say_so():
    a = spd(2, 5, torch.float64)
    b = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    res = ops.cg_dense(a, b, 0.1, 1e-10)
    assert res.x.requires_grad and not res.resid.requires_grad and not res.iters.requires_grad
    og = torch.randn(5, 1, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="kfe_eigvals is not differentiable, but out_grads requires grad"):
        ops.kfe_eigvals(og, torch.randn(5, 1, 4, dtype=torch.float64), orthogonal(3, torch.float64),
                        orthogonal(4, torch.float64))


def test_woodbury_refuses_complex_and_takes_any_real_scalar_damping():
    u, v = torch.randn(2, 6, 2, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="u must be float32 or float64, got torch.complex128"):
        woodbury_solve(u.to(torch.complex128), v.to(torch.complex128), 0.5)
    expected = reference.woodbury_solve(u, v, 0.5)
    for damping in (np.float32(0.5), torch.tensor(0.5), np.float64(0.5), 1 / 2):
        torch.testing.assert_close(woodbury_solve(u, v, damping), expected)
    for damping, message in ((0.0, "> 0"), (torch.ones(2), "real number"), (True, "real number"), ("0.5", "real")):
        with pytest.raises(ValueError, match=message):
            woodbury_solve(u, v, damping)


@pytest.mark.parametrize("call, message", [
    (lambda m: ops.ce_head_hvp(*m["head"], float("nan")), "damping must be finite"),
    (lambda m: ops.cg_dense(m["a"], m["b"], rtol=float("nan")), "rtol must be finite"),
    (lambda m: ops.cg_dense(m["a"], m["b"], damping=float("inf")), "damping must be finite"),
    (lambda m: ops.neumann_dense(m["a"], m["b"], 3, damping=float("nan")), "damping must be finite"),
    (lambda m: ops.kfe_ihvp(m["g"], m["q"], m["q"], m["e"], -1.0), "damping must be >= 0"),
    (lambda m: ops.ggn_hvp(m["jac"], m["probs"], m["vecs"], 0.1, m["weights"].float()), "weights has dtype"),
    (lambda m: ops.cg_ce_head(m["feats"], m["probs"], m["hb"], 0.0), "damping must be > 0"),
])
def test_fake_kernels_refuse_what_the_cpu_kernels_refuse(call, message):
    """The same call with meta tensors (the fake kernel) and with CPU tensors (the kernel)."""
    for device in ("cpu", "meta"):
        with torch.device(device):
            dt = torch.float64
            feats, probs = torch.randn(2, 3, 4, dtype=dt), torch.softmax(torch.randn(2, 3, 3, dtype=dt), -1)
            tensors = {"a": torch.eye(4, dtype=dt).expand(2, 4, 4).contiguous(), "b": torch.ones(2, 1, 4, dtype=dt),
                       "head": (feats, probs, torch.ones(2, 1, 3, 4, dtype=dt)), "feats": feats, "probs": probs,
                       "hb": torch.ones(2, 1, 3, 4, dtype=dt), "g": torch.ones(2, 3, 3, dtype=dt),
                       "q": torch.eye(3, dtype=dt), "e": torch.ones(3, 3, dtype=dt),
                       "jac": torch.ones(2, 3, 3, 5, dtype=dt), "vecs": torch.ones(2, 1, 5, dtype=dt),
                       "weights": torch.ones(2, 3, dtype=dt)}
            with pytest.raises(RuntimeError, match=message):
                call(tensors)
