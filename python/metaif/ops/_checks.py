"""Checks of the fake (meta) kernels, worded like the C++ ones, on ``torch._check`` so that they
also hold for symbolic shapes under ``torch.compile``.

A fake kernel runs whenever one input is a meta tensor, so it checks every tensor argument's
device too: a meta tensor among real ones must raise, naming the argument, not return an
uninitialised result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def require(condition, op: str, message: str) -> None:
    """Raise ``RuntimeError(f"{op}: {message}")`` unless ``condition`` (a bool or SymBool)."""
    torch._check(condition, lambda: f"{op}: {message}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int | None], desc: str) -> None:
    """``t`` must have ``len(expected)`` dims; ``None`` entries are free."""
    require(t.dim() == len(expected), op, f"{name} must have shape {desc}, got {tuple(t.shape)}")
    for size, want in zip(t.shape, expected):
        if want is not None:
            require(size == want, op, f"{name} must have shape {desc}, got {tuple(t.shape)}")


def check_like(op: str, ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    require(t.dtype == ref.dtype, op, f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; "
                                      f"pass both in the same dtype")
    check_device(op, ref_name, ref, name, t)


def check_device(op: str, ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    require(t.device == ref.device, op, f"{name} is on {t.device} but {ref_name} is on {ref.device}; "
                                        f"move them to one device")


def check_floating(op: str, name: str, t: torch.Tensor) -> None:
    require(t.dtype in (torch.float32, torch.float64), op, f"{name} must be float32 or float64, got {t.dtype}")


def check_number(op: str, name: str, value: float, minimum: float | None = None, strict: bool = False) -> None:
    """A finite float (``>= minimum``, or ``> minimum`` when ``strict``)."""
    require(math.isfinite(value), op, f"{name} must be finite, got {value}")
    if minimum is not None:
        ok = value > minimum if strict else value >= minimum
        require(ok, op, f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value}")


def check_vector_only_grad(op: str, vector_name: str, **others: torch.Tensor | None) -> None:
    """The ops are differentiable in their vector input only: refuse a silent zero gradient."""
    for name, t in others.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{op} is differentiable only in {vector_name}; {name} requires grad — "
                f"detach it, or use metaif.reference.{op} to differentiate through it")
