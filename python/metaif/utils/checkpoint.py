"""The state of a checkpointed loop (training, polishing), tied to what fixes its trajectory: a
loop resumes only from a checkpoint of the same run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .io import save_torch
from .store import StaleResults, differences

__all__ = ["Checkpoint"]


class Checkpoint:
    """A loop's state at ``path`` (``None``: the loop keeps none) for the run described by
    ``identity`` (JSON-able: what fixes the trajectory), loaded onto ``device``."""

    def __init__(self, path: str | os.PathLike | None, identity: dict, device: torch.device | str = "cpu") -> None:
        self.path = Path(path) if path else None
        self.identity, self.device = identity, device

    def load(self) -> dict | None:
        """The saved state of this run, or ``None`` when there is none; raises :class:`StaleResults`
        naming what differs when the checkpoint belongs to another run."""
        if self.path is None or not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False, map_location=self.device)
        if state.get("identity") != self.identity:
            changed = "; ".join(differences(state.get("identity"), self.identity)[:6])
            raise StaleResults(f"{self.path}: a checkpoint of another run ({changed}); delete it, or rerun with --force")
        return state

    def save(self, **state: Any) -> None:
        """Write ``state`` with this run's identity (atomically; nothing when the loop keeps none)."""
        if self.path is not None:
            save_torch(self.path, {"identity": self.identity, **state})
