"""Exact sums against rational arithmetic: the same bits in any order and grouping, accurate to the
output dtype's last bit, non-finite addends propagating as in a float sum."""

import random
from fractions import Fraction

import pytest
import torch

from metaif.parallel import ExactSum


def _addends(count: int, size: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Addends over 20 orders of magnitude, of both signs (float sums of these depend on the order)."""
    gen = torch.Generator().manual_seed(seed)
    scales = 10.0 ** (20 * torch.rand(count, generator=gen, dtype=torch.float64) - 10)
    return [(torch.randn(size, generator=gen, dtype=torch.float64) * s).to(dtype) for s in scales]


def _exact(addends: list[torch.Tensor]) -> torch.Tensor:
    """The rational sum of every element, rounded once to float64."""
    columns = zip(*(a.double().tolist() for a in addends))
    return torch.tensor([float(sum(map(Fraction, column))) for column in columns], dtype=torch.float64)


def _summed(addends: list[torch.Tensor], order: list[int], groups: int) -> torch.Tensor:
    sums = [ExactSum(addends[0]) for _ in range(groups)]
    for k, i in enumerate(order):
        sums[k % groups].add(addends[i])
    for other in sums[1:]:
        sums[0].merge(other)
    return sums[0].value()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_order_and_grouping_gives_the_same_bits_within_2_to_the_minus_64(dtype):
    addends = _addends(24, 300, dtype)
    first = _summed(addends, list(range(24)), 1)
    plain = [sum(addends[i] for i in order) for order in (range(24), reversed(range(24)))]
    assert not torch.equal(*plain)  # the float sums of these addends do depend on the order
    rng = random.Random(0)
    for _ in range(10):
        order = rng.sample(range(24), 24)
        assert torch.equal(_summed(addends, order, rng.randint(1, 5)), first)
    assert first.dtype == dtype
    exact, largest = _exact(addends), torch.stack(addends).double().abs().amax(0)
    # two roundings in value() (plus the reference's own), and each addend's digits below 2**-64 of the largest
    bound = 1.5 * torch.finfo(dtype).eps * exact.abs() + 24 * 2.0 ** -64 * largest
    assert bool(((first.double() - exact).abs() <= bound).all())


def test_rows_and_a_late_largest_addend_give_the_same_bits():
    addends = _addends(6, 40, torch.float32, seed=3)
    addends.append(torch.full((40,), 3e30))  # arrives last: every earlier window moves up
    whole = _summed(addends, list(range(7)), 1)
    by_rows = ExactSum(addends[0])
    rows = torch.tensor([0, 5, 5, 39])  # a repeated row gets its addend twice
    for a in addends:
        by_rows.add(a, torch.arange(40))
    torch.testing.assert_close(by_rows.value(), whole, rtol=0, atol=0)
    twice = ExactSum(addends[0])
    twice.add(addends[1], rows)
    expected = torch.zeros(40)
    expected.index_add_(0, rows, addends[1][rows])
    assert torch.equal(twice.value(), expected)


def test_each_element_keeps_64_bits_below_its_own_largest_addend():
    big, tiny = torch.tensor([1.0, 1e10], dtype=torch.float64), torch.tensor([1e-12, 1e-3], dtype=torch.float64)
    assert bool(((big + tiny - big - tiny).abs() > 1e-6 * tiny).all())  # a float64 sum loses 1e-5 of them
    total = ExactSum(big)
    for addend in (big, tiny, -big):
        total.add(addend)
    assert bool(((total.value() - tiny).abs() <= 2.0 ** -64 * big).all())


def test_nothing_sums_to_zero_and_non_finite_addends_propagate():
    assert torch.equal(ExactSum(torch.zeros(3)).value(), torch.zeros(3))
    total = ExactSum(torch.zeros(3))
    total.add(torch.tensor([1.0, float("inf"), float("inf")]))
    total.add(torch.tensor([float("nan"), 2.0, float("-inf")]))
    value = total.value()
    assert value[0].isnan() and value[1] == float("inf") and value[2].isnan()


def test_a_wrong_shape_is_refused_with_both_shapes():
    with pytest.raises(ValueError, match=r"shape \(2,\) cannot join a sum of shape \(3,\)"):
        ExactSum(torch.zeros(3)).add(torch.zeros(2))
