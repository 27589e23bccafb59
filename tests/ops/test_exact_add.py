"""The compiled steps of an exact sum against ExactSum's pure-PyTorch ones (metaif.reference): the
same limbs, top windows and values, bit for bit, over addends that move every element's top window,
with zeros, subnormals and non-finite elements; wrong arguments are named."""

import pytest
import torch

from metaif import ops, reference
from metaif.parallel import ExactSum


def _state(shape):
    empty = ExactSum(torch.zeros(shape))
    return empty.limbs.clone(), empty.top.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernels_keep_the_limbs_and_values_of_the_pure_pytorch_steps(dtype):
    gen = torch.Generator().manual_seed(0)
    shape = (301, 7)
    ours, theirs = _state(shape), _state(shape)
    tiny = torch.finfo(dtype).tiny
    for k in range(8):  # magnitudes from 1e-30 to 1e30, growing and shrinking: tops move up
        scale = torch.exp(torch.randn(shape, generator=gen, dtype=torch.float64) * 8 + 4 * (k - 4)).to(dtype)
        x = torch.randn(shape, generator=gen, dtype=dtype) * scale
        x[::5] = 0.0
        x[1, :3] = torch.tensor([tiny / 8, -tiny, float("inf")], dtype=dtype)  # subnormal, smallest normal
        x[2, 0] = float("nan")
        ops.exact_add(*ours, x)
        reference.exact_add(*theirs, x)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), f"addend {k}"
        values = [torch.empty(shape, dtype=dtype) for _ in range(2)]
        ops.exact_value(*ours, values[0])  # carries the limbs: the same sum, then added to again
        reference.exact_value(*theirs, values[1])
        assert torch.equal(*values) and torch.equal(ours[0], theirs[0]), f"value after addend {k}"
    assert (ours[1] > -(2 ** 20)).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rows_go_to_their_rows_as_often_as_they_are_named(dtype):
    gen = torch.Generator().manual_seed(1)
    shape = (40, 3, 5)
    ours, theirs = _state(shape), _state(shape)
    named = torch.zeros(shape[0], dtype=torch.bool)
    for k in range(4):
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 10.0 ** (6 * (k - 2))).to(dtype)
        x[3, 1, 2] = float("inf")
        rows = torch.randint(0, shape[0], (25,), generator=gen)  # repeats: added as often
        rows[:2] = 7
        named[rows] = True
        ops.exact_add(*ours, x, rows)
        reference.exact_add(*theirs, x, rows)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]), f"addend {k}"
    assert not named.all() and (ours[1][~named] == -(2 ** 20)).all() and (ours[0][:, ~named] == 0).all()
    single = ExactSum(torch.zeros(shape, dtype=dtype))  # row 7, twice, is the sum of the part's row 7 twice
    twice = ExactSum(torch.zeros(shape, dtype=dtype))
    single.add(x, torch.tensor([7, 7]))
    twice.add(x, torch.tensor([7]))
    twice.add(x, torch.tensor([7]))
    assert torch.equal(single.value(), twice.value()) and torch.equal(single.value()[7], (2 * x[7].double()).to(dtype))


def test_exact_sum_rows_are_checked():
    total = ExactSum(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"rows must index the sum's first dimension \[0, 4\), got values in \[0, 4\]"):
        total.add(torch.ones(4, 2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="rows must be an int64 \\[count\\] index"):
        total.add(torch.ones(4, 2), torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"an addend of shape \(3, 2\) cannot join a sum of shape \(4, 2\)"):
        total.add(torch.ones(3, 2), torch.tensor([0]))


def test_bad_arguments_are_named():
    limbs, top = _state((4,))
    x = torch.randn(4)
    with pytest.raises(RuntimeError, match="limbs must be int64 and top int32"):
        ops.exact_add(limbs.int(), top, x)
    with pytest.raises(RuntimeError, match=r"limbs must have shape \[3, \*values.shape\].*got \[3, 4\] and \[4\]"):
        ops.exact_add(limbs, top, torch.randn(5))
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        ops.exact_add(limbs, top, torch.ones(4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="updated in place and must be contiguous"):
        ops.exact_add(torch.zeros(4, 3, dtype=torch.int64).T, top, x)
    with pytest.raises(RuntimeError, match=r"rows\[1\] = 4 is not a row of x \(4 rows\)"):
        ops.exact_add(limbs, top, x, torch.tensor([0, 4]))
    with pytest.raises(RuntimeError, match="rows must be int64"):
        ops.exact_add(limbs, top, x, torch.tensor([0], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="exact_value: out must be float32 or float64"):
        ops.exact_value(limbs, top, torch.empty(4, dtype=torch.int64))
