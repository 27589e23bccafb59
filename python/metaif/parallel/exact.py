"""Sums whose result does not depend on the order or grouping of the addends.

A floating-point sum changes with the order of its additions, so a sum split over ranks (each
adding its share, then an all-reduce) gives other bits on another number of ranks. Here every
element of every addend is cut into integer digits on a grid of fixed ``WINDOW_BITS``-bit windows,
the same grid for every addend (binned summation, as in ReproBLAS): per element, the digits of the
``WINDOWS`` windows from the one holding the largest addend's leading bit down are added as 64-bit
integers, which is exact and associative, and lower digits are dropped from every addend alike. The
result is then the same whatever the order, the grouping into ranks, or when the largest addend
arrived, and it is within ``count * 2**-64`` of the element's largest addend of the exact sum (more
accurate than a float64 sum); the final rounding to the output dtype is the only one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["WINDOWS", "WINDOW_BITS", "ExactSum", "carried_value"]

WINDOW_BITS = 32  # digits below 2**32: 2**31 of them fit in an int64 limb before it could overflow
WINDOWS = 3  # kept windows: at least 64 bits below an element's largest leading bit
_LOWEST = -31 + WINDOWS - 1  # lowest top window: units stay >= 2**-992 (normal float64)
_EMPTY = -(2 ** 20)  # the top window of an element that has only had zeros (below every real one)
_SLICE = 1 << 22  # elements per slice of value()
_KERNEL_DTYPES = (torch.float32, torch.float64)  # what the compiled steps take


def _windows(x: torch.Tensor) -> torch.Tensor:
    """The window holding each element's leading bit (``_EMPTY`` for zeros), int32."""
    exponent = torch.frexp(x).exponent  # |x| < 2**exponent: the leading bit is exponent - 1
    top = torch.div(exponent - 1, WINDOW_BITS, rounding_mode="floor").clamp_(min=_LOWEST)
    return torch.where(x == 0, _EMPTY, top).to(torch.int32)


def _has_kernel(device: torch.device, op: str = "exact_add") -> bool:
    """Whether the compiled ``metaif::<op>`` (registered when the package is imported, before this
    layer is) serves ``device``; elsewhere the sum runs on the pure-PyTorch path, to the same bits."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"metaif::{op}", key)


def _check_rows(rows: torch.Tensor, shape: torch.Size) -> None:
    if rows.dtype != torch.int64 or rows.dim() != 1:
        raise ValueError(f"rows must be an int64 [count] index, got {rows.dtype} of shape {tuple(rows.shape)}")
    if len(shape) == 0:
        raise ValueError("rows need a sum with a first dimension, got a 0-d sum")
    if len(rows) and not (0 <= int(rows.min()) and int(rows.max()) < shape[0]):
        raise ValueError(f"rows must index the sum's first dimension [0, {shape[0]}), got values in "
                         f"[{int(rows.min())}, {int(rows.max())}]")


def _shifted(limbs: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``limbs [WINDOWS, *s]`` re-expressed ``shift [*s] >= 0`` windows higher, element by element."""
    out = torch.zeros_like(limbs)
    for j in range(WINDOWS):
        source = j - shift  # the old window that becomes window j
        for i in range(j + 1):  # the old windows that can land on j
            out[j] += torch.where(source == i, limbs[i], 0)
    return out


def _unit(top: torch.Tensor, j: int) -> torch.Tensor:
    """``2**(WINDOW_BITS * (top - j))``, float64 (exact powers of two; 0 for empty elements)."""
    exponent = (WINDOW_BITS * (top.to(torch.int64) - j)).clamp(min=-1100)
    return torch.ldexp(torch.ones_like(exponent, dtype=torch.float64), exponent)


class ExactSum:
    """A running sum of tensors shaped like ``like`` (its dtype is the result's), independent of the
    addends' order and grouping and within ``count * 2**-64`` of each element's largest addend.

    :meth:`add` deposits an addend (or rows of one); :meth:`merge` adds another sum, which is what
    an all-reduce of :attr:`top` (max), then of :attr:`limbs` and :meth:`special` (sums) does over
    ranks after :meth:`align`; :meth:`value` rounds once to the dtype. Non-finite addends make the
    value non-finite, as a float sum would (inf + -inf is nan in any order); the float64 side sum
    that holds them exists only once one arrives (:attr:`has_special`)."""

    def __init__(self, like: torch.Tensor) -> None:
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device
        self.limbs = torch.zeros(WINDOWS, *like.shape, dtype=torch.int64, device=like.device)
        self.top = torch.full(like.shape, _EMPTY, dtype=torch.int32, device=like.device)
        self._special: Tensor | None = None

    def add(self, part: torch.Tensor, rows: torch.Tensor | None = None, *, compiled: bool = True) -> None:
        """Add ``part`` (shaped like the sum), or only its ``rows`` (an int64 index into the first
        dimension: ``part[rows]`` goes to those rows of the sum; a repeated row is added as often).
        ``compiled=False`` takes the pure-PyTorch steps even where the compiled op serves (the same
        limbs: what :mod:`metaif.reference` checks the op against)."""
        if part.shape != self.shape:
            raise ValueError(f"an addend of shape {tuple(part.shape)} cannot join a sum of shape {tuple(self.shape)}")
        if rows is not None:
            _check_rows(rows, self.shape)
        part = part.detach()
        if compiled and part.dtype in _KERNEL_DTYPES and _has_kernel(part.device):
            if not bool(torch.isfinite(part).all()):
                x = part if rows is None else part[rows]
                self._scatter(self.special(), rows, torch.where(torch.isfinite(x), 0.0, x.to(torch.float64)))
            torch.ops.metaif.exact_add(self.limbs, self.top, part, rows)  # skips the non-finite elements
            return
        x = (part if rows is None else part[rows]).to(torch.float64)  # only the rows widen
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            self._scatter(self.special(), rows, torch.where(finite, 0.0, x))
            x = torch.where(finite, x, 0.0)
        if rows is None:
            self.align(torch.maximum(self.top, _windows(x)))
            top = self.top
        else:
            touched, slot = torch.unique(rows, return_inverse=True)
            index = slot.view(-1, *[1] * (x.dim() - 1)).expand_as(x)
            wanted = self.top[touched].scatter_reduce_(0, index, _windows(x), "amax")  # only the touched rows
            self.limbs[:, touched] = _shifted(self.limbs[:, touched], (wanted - self.top[touched]).to(torch.int64))
            self.top[touched] = wanted
            top = self.top[rows]
        for j in range(WINDOWS):
            unit = _unit(top, j)
            # exact: a power-of-two scale, |digits| < 2**32 (no digits where nothing was ever added)
            digits = torch.where(unit > 0, torch.trunc(x / unit), 0.0)
            x = x - digits * unit  # exact: clears the digits' bits
            self._scatter(self.limbs[j], rows, digits.to(torch.int64))

    @staticmethod
    def _scatter(into: torch.Tensor, rows: torch.Tensor | None, values: torch.Tensor) -> None:
        if rows is None:
            into += values
        else:
            into.index_add_(0, rows, values)

    def align(self, top: torch.Tensor) -> None:
        """Re-express the sum on windows up to ``top`` (element-wise at least its own): what every
        rank does with the largest top of all ranks before their limbs are added."""
        top = top.to(self.top)
        if bool((top < self.top).any()):
            raise ValueError("align cannot lower a top window")
        self.limbs = _shifted(self.limbs, (top - self.top).to(torch.int64))
        self.top = top.clone()

    def merge(self, other: ExactSum) -> None:
        """Add another sum of the same shape into this one (exactly)."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge a sum of shape {tuple(other.shape)} into one of {tuple(self.shape)}")
        top = torch.maximum(self.top, other.top)
        self.align(top)
        self.limbs += _shifted(other.limbs, (top - other.top).to(torch.int64))
        if other.has_special:
            self.special().add_(other.special())

    @property
    def has_special(self) -> bool:
        """Whether a non-finite addend arrived (then :meth:`special` holds their sum)."""
        return self._special is not None

    def special(self) -> torch.Tensor:
        """The float64 sum of the non-finite addends, ``[*shape]`` (made on first use)."""
        if self._special is None:
            self._special = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        return self._special

    def value(self) -> torch.Tensor:
        """The sum, rounded once to the dtype of ``like`` (the limbs carried in place: the same sum)."""
        if not self.has_special and self.dtype in _KERNEL_DTYPES and _has_kernel(self.device, "exact_value"):
            out = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            torch.ops.metaif.exact_value(self.limbs, self.top, out)
            return out
        return carried_value(self.limbs, self.top, self._special, self.dtype).view(self.shape)


def carried_value(limbs: Tensor, top: Tensor, special: Tensor | None, dtype: torch.dtype) -> Tensor:
    """The pure-PyTorch value of a sum held as ``limbs [WINDOWS, *s]`` and ``top [*s]`` (carried in
    place), plus the float64 sum of its non-finite addends ``special``, rounded once to ``dtype``,
    flat; worked out ``_SLICE`` elements at a time, so that the temporaries stay small beside the limbs."""
    limbs, top = limbs.view(WINDOWS, -1), top.view(-1)
    out = torch.empty(top.numel(), dtype=dtype, device=top.device)
    for start in range(0, top.numel(), _SLICE):
        part, at = limbs[:, start:start + _SLICE], top[start:start + _SLICE]
        for j in range(WINDOWS - 1, 0, -1):  # carry upwards: lower limbs in [0, 2**32)
            carry = part[j] >> WINDOW_BITS
            part[j] -= carry << WINDOW_BITS
            part[j - 1] += carry
        total = part[WINDOWS - 1].to(torch.float64).mul_(_unit(at, WINDOWS - 1))
        for j in range(WINDOWS - 2, 0, -1):  # below 2**64 units of the top window: one rounding
            total.add_(part[j].to(torch.float64).mul_(_unit(at, j)))
        total = part[0].to(torch.float64).mul_(_unit(at, 0)).add_(total)
        if special is not None:
            total.add_(special.view(-1)[start:start + _SLICE])
        out[start:start + _SLICE] = total
    return out
