"""Optional dependencies: the core needs torch, numpy and tqdm only; data sets and plots come with
``pip install 'metaif[experiments]'``."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingExtra", "optional_import"]


class MissingExtra(ImportError):
    """A feature needs a package of an optional extra that is not installed."""


def optional_import(module: str, purpose: str, extra: str = "experiments") -> ModuleType:
    """``import module``, or a :class:`MissingExtra` that says what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"sklearn": "scikit-learn", "PIL": "pillow"}.get(module.split(".")[0], module.split(".")[0])
        raise MissingExtra(f"{purpose} needs {package}, which is not installed: pip install 'metaif[{extra}]'") \
            from None
