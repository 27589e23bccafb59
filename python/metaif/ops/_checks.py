"""Shape and dtype checks for the fake (meta) kernels, worded like the C++ ones."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def require(condition: bool, op: str, message: str) -> None:
    """Raise ``RuntimeError(f"{op}: {message}")`` unless ``condition``."""
    if not condition:
        raise RuntimeError(f"{op}: {message}")


def check_shape(op: str, name: str, t: torch.Tensor, expected: Sequence[int | None], desc: str) -> None:
    """``t`` must have ``len(expected)`` dims; ``None`` entries are free."""
    ok = t.dim() == len(expected) and all(e is None or s == e for s, e in zip(t.shape, expected))
    require(ok, op, f"{name} must have shape {desc}, got {tuple(t.shape)}")


def check_like(op: str, ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor) -> None:
    require(t.dtype == ref.dtype, op, f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; pass both in the same dtype")
    require(t.device == ref.device, op, f"{name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")


def check_floating(op: str, name: str, t: torch.Tensor) -> None:
    require(t.dtype in (torch.float32, torch.float64), op, f"{name} must be float32 or float64, got {t.dtype}")


def check_vector_only_grad(op: str, vector_name: str, **others: torch.Tensor | None) -> None:
    """The ops are differentiable in their vector input only: refuse a silent zero gradient."""
    for name, t in others.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{op} is differentiable only in {vector_name}; {name} requires grad — "
                f"detach it, or use metaif.reference.{op} to differentiate through it")
