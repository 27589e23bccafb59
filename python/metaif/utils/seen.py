"""Recognising a tensor seen before without looking at its values (which, on a GPU, would cost a
device synchronisation per check)."""

from __future__ import annotations

import torch

__all__ = ["SeenTensor"]


class SeenTensor:
    """Remembers one tensor; :meth:`matches` is true for that very object with no in-place write
    since (its version counter is unchanged). Holding the reference keeps its memory from being
    reused by another tensor. Writes through ``.data`` bypass the version counter: do not."""

    def __init__(self) -> None:
        self._tensor: torch.Tensor | None = None
        self._version = -1

    def matches(self, t: torch.Tensor) -> bool:
        return t is self._tensor and t._version == self._version

    def remember(self, t: torch.Tensor) -> None:
        self._tensor, self._version = t, t._version
