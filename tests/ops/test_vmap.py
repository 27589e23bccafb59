"""torch.func.vmap over the ops runs their batching rules (no per-example fallback warning) and
equals a loop over the vmapped slices."""

import warnings

import pytest
import torch
from torch.func import vmap

from metaif import ops
from tests.helpers import ce_head_problem, orthogonal, spd

X = 3  # the vmapped size


def problems(dt=torch.float64):
    feats, probs, weights = ce_head_problem(2, 4, 3, 3, dt)
    return {"feats": feats, "probs": probs, "weights": weights, "hvecs": torch.randn(2, 2, 3, 3, dtype=dt),
            "jac": torch.randn(2, 4, 3, 5, dtype=dt), "gvecs": torch.randn(2, 1, 5, dtype=dt), "a": spd(2, 4, dt),
            "b": torch.randn(2, 2, 4, dtype=dt), "grads": torch.randn(2, 3, 5, dtype=dt), "q_out": orthogonal(3, dt),
            "q_in": orthogonal(5, dt), "eig": torch.rand(3, 5, dtype=dt) + 0.1,
            "cols": torch.randn(2, 6, 3, dtype=dt), "index": torch.randint(0, 6, (2, 4, 2)),
            "mask": torch.rand(2, 4, 2, dtype=dt), "weight": torch.randn(2, 3, dtype=dt),
            "og": torch.randn(5, 2, 3, dtype=dt), "acts": torch.randn(5, 2, 5, dtype=dt)}


CASES = {
    "ce_head_hvp": (("hvecs",), lambda p: ops.ce_head_hvp(p["feats"], p["probs"], p["hvecs"], 0.1, p["weights"])),
    "ce_head_hvp (all)": (("feats", "probs", "hvecs", "weights"),
                          lambda p: ops.ce_head_hvp(p["feats"], p["probs"], p["hvecs"], 0.1, p["weights"])),
    "ggn_hvp": (("jac", "gvecs"), lambda p: ops.ggn_hvp(p["jac"], p["probs"], p["gvecs"], 0.1)),
    "neumann_dense": (("b",), lambda p: ops.neumann_dense(p["a"], p["b"], 20, 5.0, 0.1)),
    "neumann_dense (scale None)": (("a", "b"), lambda p: ops.neumann_dense(p["a"], p["b"], 20, None, 0.1)),
    "neumann_ce_head": (("hvecs",), lambda p: ops.neumann_ce_head(p["feats"], p["probs"], p["hvecs"], 10, 50.0, 0.3)),
    "cg_dense": (("a", "b"), lambda p: ops.cg_dense(p["a"], p["b"], 0.1, 1e-12).x),
    "cg_ce_head": (("hvecs",), lambda p: ops.cg_ce_head(p["feats"], p["probs"], p["hvecs"], 0.2, 1e-12).x),
    "kfe_ihvp": (("grads",), lambda p: ops.kfe_ihvp(p["grads"], p["q_out"], p["q_in"], p["eig"], 0.1)),
    "kfe_ihvp (eigvals)": (("eig",), lambda p: ops.kfe_ihvp(p["grads"], p["q_out"], p["q_in"], p["eig"], 0.1)),
    "kfe_eigvals": (("og",), lambda p: ops.kfe_eigvals(p["og"], p["acts"], p["q_out"], p["q_in"])),
    "gather_patch_matmul": (("cols", "mask"),
                            lambda p: ops.gather_patch_matmul(p["cols"], p["index"], p["mask"], p["weight"])),
    "gather_patch_matmul (weight)": (("weight",),
                                     lambda p: ops.gather_patch_matmul(p["cols"], p["index"], p["mask"], p["weight"])),
    "gather_patch_matmul_t": (("mask",),
                              lambda p: ops.gather_patch_matmul_t(p["cols"], p["index"], p["mask"], p["mask"])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_equals_a_loop_without_the_fallback(name):
    mapped, fn = CASES[name]
    base = problems()
    stacked = {k: torch.stack([v * (1 + 0.1 * i) if v.is_floating_point() else v for i in range(X)])
               for k, v in base.items() if k in mapped}
    if "probs" in mapped:
        stacked["probs"] = torch.softmax(torch.randn(X, *base["probs"].shape, dtype=torch.float64), -1)

    def call(*values):
        return fn({**base, **dict(zip(stacked, values))})

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the per-example fallback warns
        out = vmap(call)(*stacked.values())
    loop = torch.stack([call(*(v[i] for v in stacked.values())) for i in range(X)])
    torch.testing.assert_close(out, loop)
