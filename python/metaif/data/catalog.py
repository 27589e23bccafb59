"""Data sets by name: what ``--dataset`` chooses from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .datasets import ClassDataset, load_digits, load_miniimagenet, load_mnist, load_omniglot
from .synthetic import SYNTHETIC_NAME, make_synthetic_images

__all__ = ["DATASETS", "EMBEDDED", "load_dataset"]

# name -> loader of a root folder
ON_DISK: dict[str, Callable[[str | Path], ClassDataset]] = {
    "omniglot": load_omniglot, "mnist": load_mnist, "miniimagenet": load_miniimagenet}
# name -> maker that needs no files: the embedded digits and the synthetic mini-ImageNet-shaped set
EMBEDDED: dict[str, Callable[[], ClassDataset]] = {"digits": load_digits, SYNTHETIC_NAME: make_synthetic_images}
DATASETS = (*EMBEDDED, *ON_DISK)


def load_dataset(name: str, root: str | Path | None = None) -> ClassDataset:
    """Load by name: ``digits`` and ``synthetic-miniimagenet`` (no root), ``mnist``, ``omniglot``,
    ``miniimagenet`` (root required)."""
    if name in EMBEDDED:
        return EMBEDDED[name]()
    if name not in ON_DISK:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"dataset {name!r} needs --root: the folder that holds its files")
    return ON_DISK[name](root)
