"""gather_patch_matmul and its adjoint against the pure-PyTorch references."""

import pytest
import torch

from metaif import ops, reference


def problem(dtype, n=3, rows=10, taps=4, positions=5, channels=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cols = torch.randn(n, rows, taps, generator=gen, dtype=dtype)
    index = torch.randint(0, rows, (n, positions, channels), generator=gen)  # repeats included
    mask = (torch.rand(n, positions, channels, generator=gen) > 0.3).to(dtype)
    weight = torch.randn(channels, taps, generator=gen, dtype=dtype)
    signal = torch.randn(n, positions, channels, generator=gen, dtype=dtype)
    return cols, index, mask, weight, signal


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(dtype):
    cols, index, mask, weight, signal = problem(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(ops.gather_patch_matmul(cols, index, mask, weight),
                               reference.gather_patch_matmul(cols, index, mask, weight), **tol)
    torch.testing.assert_close(ops.gather_patch_matmul_t(cols, index, mask, signal),
                               reference.gather_patch_matmul_t(cols, index, mask, signal), **tol)


def test_the_two_ops_are_adjoint_and_match_conv_then_pool():
    """<signal, A weight> = <A^T signal, weight>, and A is a conv read at max-pool arg-maxes."""
    cols, index, mask, weight, signal = problem(torch.float64)
    a = (signal * ops.gather_patch_matmul(cols, index, mask, weight)).sum()
    b = (ops.gather_patch_matmul_t(cols, index, mask, signal) * weight).sum()
    torch.testing.assert_close(a, b)
    x, w = torch.randn(2, 1, 6, 6, dtype=torch.float64), torch.randn(4, 1, 3, 3, dtype=torch.float64)
    z = torch.nn.functional.conv2d(x, w, padding=1)
    pooled, idx = torch.nn.functional.max_pool2d(z, 2, return_indices=True)
    patches = torch.nn.functional.unfold(x, 3, padding=1).mT  # [N, 36, 9]
    index = idx.flatten(2).mT.contiguous()                     # [N, P, C]
    got = ops.gather_patch_matmul(patches.contiguous(), index, torch.ones_like(index, dtype=x.dtype), w.flatten(1))
    torch.testing.assert_close(got, pooled.flatten(2).mT)


@pytest.mark.parametrize("sizes", [dict(n=0), dict(positions=0)])
def test_empty_inputs(sizes):
    cols, index, mask, weight, signal = problem(torch.float64, **sizes)
    for impl in (ops, reference):
        assert impl.gather_patch_matmul(cols, index, mask, weight).shape == index.shape
        assert float(impl.gather_patch_matmul_t(cols, index, mask, signal).abs().sum()) == 0.0


def test_opcheck_and_gradients():
    cols, index, mask, weight, signal = problem(torch.float64)
    torch.library.opcheck(torch.ops.metaif.gather_patch_matmul.default,
                          (cols, index, mask, weight.requires_grad_(True)))
    torch.library.opcheck(torch.ops.metaif.gather_patch_matmul_t.default,
                          (cols, index, mask, signal.requires_grad_(True)))
    torch.autograd.gradcheck(lambda w: ops.gather_patch_matmul(cols, index, mask, w), (weight,))
    torch.autograd.gradcheck(lambda s: ops.gather_patch_matmul_t(cols, index, mask, s), (signal,))
    with pytest.raises(RuntimeError, match="differentiable only in weight"):
        ops.gather_patch_matmul(cols.requires_grad_(True), index, mask, weight)


@pytest.mark.parametrize("mutate, message", [
    (lambda a: a.update(index=a["index"] + 10), r"index values must lie in \[0, cols.shape\[1\]\)"),
    (lambda a: a.update(index=a["index"].int()), "index must be int64"),
    (lambda a: a.update(mask=a["mask"][:, :2]), "mask must have the shape of index"),
    (lambda a: a.update(weight=a["weight"][:, :3]), r"weight.shape\[1\] must equal cols.shape\[2\]"),
    (lambda a: a.update(weight=a["weight"].float()), "weight has dtype Float but cols has Double"),
    (lambda a: a.update(cols=a["cols"][0]), r"cols must have shape \[N, L, K\]"),
])
def test_bad_input_is_named(mutate, message):
    cols, index, mask, weight, _ = problem(torch.float64)
    args = dict(cols=cols, index=index, mask=mask, weight=weight)
    mutate(args)
    with pytest.raises(RuntimeError, match=message):
        ops.gather_patch_matmul(**args)
