"""Run by tests/test_packaging.py inside a fresh venv that has only torch and the built wheel: every
public op against its pure-PyTorch twin in metaif.reference (float64, CPU), and the core without the
"experiments" extra. Prints "wheel ok <metaif's path>" at the end."""

import torch

import metaif
from metaif import ops, reference

torch.manual_seed(0)
f64 = {"dtype": torch.float64}


def close(actual, expected, what):
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what}: {m}")


def basis(d):
    return torch.linalg.qr(torch.randn(d, d, **f64))[0]


# Kronecker-factored eigenbasis
g, q_out, q_in, e = torch.randn(2, 3, 4, **f64), basis(3), basis(4), torch.rand(3, 4, **f64)
close(ops.kfe_ihvp(g, q_out, q_in, e, 0.1), reference.kfe_ihvp(g, q_out, q_in, e, 0.1), "kfe_ihvp")
close(ops.kfe_ihvp_grouped([g, g], [q_out, q_out], [q_in, q_in], [e, e], 0.1),
      reference.kfe_ihvp_grouped([g, g], [q_out, q_out], [q_in, q_in], [e, e], 0.1), "kfe_ihvp_grouped")
out_grads, acts = torch.randn(5, 2, 3, **f64), torch.randn(5, 2, 4, **f64)
close(ops.kfe_eigvals(out_grads, acts, q_out, q_in), reference.kfe_eigvals(out_grads, acts, q_out, q_in),
      "kfe_eigvals")

# Curvature products of the softmax cross-entropy
tasks, n, d, classes = 2, 6, 4, 3
feats = torch.randn(tasks, n, d, **f64)
probs = torch.softmax(torch.randn(tasks, n, classes, **f64), -1)
vecs = torch.randn(tasks, 2, classes, d, **f64)
close(ops.ce_head_hvp(feats, probs, vecs, 0.1), reference.ce_head_hvp(feats, probs, vecs, 0.1), "ce_head_hvp")
jac = torch.randn(tasks, n, classes, 5, **f64)
jvecs = torch.randn(tasks, 2, 5, **f64)
close(ops.ggn_hvp(jac, probs, jvecs, 0.1), reference.ggn_hvp(jac, probs, jvecs, 0.1), "ggn_hvp")

# Gathered patches (a conv layer read at a max-pool's arg-max)
cols = torch.randn(2, 7, 5, **f64)
index = torch.randint(0, 7, (2, 3, 4))
mask = torch.rand(2, 3, 4, **f64)
weight, signal = torch.randn(4, 5, **f64), torch.randn(2, 3, 4, **f64)
close(ops.gather_patch_matmul(cols, index, mask, weight), reference.gather_patch_matmul(cols, index, mask, weight),
      "gather_patch_matmul")
close(ops.gather_patch_matmul_t(cols, index, mask, signal),
      reference.gather_patch_matmul_t(cols, index, mask, signal), "gather_patch_matmul_t")

# The exact sum's step
limbs, top = torch.zeros(3, 5, dtype=torch.int64), torch.full((5,), -(2 ** 20), dtype=torch.int32)
limbs_ref, top_ref = limbs.clone(), top.clone()
for scale in (1e-3, 1e6):
    addend = torch.randn(5, **f64) * scale
    ops.exact_add(limbs, top, addend)
    reference.exact_add(limbs_ref, top_ref, addend)
    ops.exact_add(limbs, top, addend, torch.tensor([4, 1, 4]))
    reference.exact_add(limbs_ref, top_ref, addend, torch.tensor([4, 1, 4]))
assert torch.equal(limbs, limbs_ref) and torch.equal(top, top_ref), "exact_add"
value, value_ref = torch.empty(5, **f64), torch.empty(5, **f64)
ops.exact_value(limbs, top, value)
reference.exact_value(limbs_ref, top_ref, value_ref)
assert torch.equal(value, value_ref), "exact_value"

# Batched solvers
m = torch.randn(tasks, 4, 4, **f64)
a = m @ m.mT + torch.eye(4, **f64)
b = torch.randn(tasks, 2, 4, **f64)
scale = torch.linalg.eigvalsh(a)[:, -1] * 1.1
close(ops.neumann_dense(a, b, 30, scale), reference.neumann_dense(a, b, 30, scale), "neumann_dense")
hb = torch.randn(tasks, 2, classes, d, **f64)
close(ops.neumann_ce_head(feats, probs, hb, 30, 2.0, damping=0.5),
      reference.neumann_ce_head(feats, probs, hb, 30, 2.0, damping=0.5), "neumann_ce_head")
close(ops.cg_dense(a, b, rtol=1e-12).x, torch.linalg.solve(a.unsqueeze(1), b.unsqueeze(-1)).squeeze(-1), "cg_dense")
close(ops.cg_ce_head(feats, probs, hb, 0.5, rtol=1e-12).x, reference.cg_ce_head(feats, probs, hb, 0.5, rtol=1e-12).x,
      "cg_ce_head")

import importlib.util  # noqa: E402

import metaif.influence  # noqa: E402,F401  (the engine imports without the experiments extra)
import metaif.meta  # noqa: E402,F401
from metaif.data import load_digits  # noqa: E402
from metaif.utils.extras import MissingExtra  # noqa: E402

if importlib.util.find_spec("sklearn") is None:  # a venv with only torch (not the GPU check's)
    try:
        load_digits()
    except MissingExtra as err:
        assert "pip install 'metaif[experiments]'" in str(err), err
    else:
        raise AssertionError("digits loaded without scikit-learn?")
print("wheel ok", metaif.__file__)
