"""Which body passes a body runs on: the registry of pass kinds and the automatic choice."""

from __future__ import annotations

import warnings

import torch

from ..linalg import MetaifWarning
from ..models.nets import FlatModel
from .body import AutogradPasses
from .traced import TracedPasses, traced_unsupported

__all__ = ["PASSES", "body_passes", "passes_for"]

# "traced": any torch.fx graph of registered steps; "autograd": any body, by double backward
PASSES = {"traced": TracedPasses, "autograd": AutogradPasses}


def passes_for(model: FlatModel) -> tuple[str, str | None]:
    """The passes ``"auto"`` takes for ``model`` and, when it is autograd, which module forced it."""
    reason = traced_unsupported(model)
    return ("traced", None) if reason is None else ("autograd", reason)


def body_passes(model: FlatModel, lam: torch.Tensor, x: torch.Tensor, method: str = "auto"):
    """The passes ``method`` (a name of :data:`PASSES`) of ``model`` at ``lam`` on ``x``; ``"auto"``
    takes the traced ones where every node of its torch.fx graph has a registered step, autograd
    otherwise (and says once why)."""
    if method == "auto":
        method, reason = passes_for(model)
        if reason is not None:  # once per reason (the warnings registry): a slower path, not an error
            warnings.warn(f"body passes: {reason} has no registered step, so the body runs on autograd's passes "
                          f"(slower and more memory per image)", MetaifWarning, stacklevel=2)
    if method not in PASSES:
        raise ValueError(f"body passes must be 'auto' or one of {', '.join(PASSES)}, got {method!r}")
    return PASSES[method](model, lam, x)
