"""Frozen dataclass configs whose fields carry their help text once.

``setting(default, "help")`` is a dataclass field with the help in its metadata; ``@config``
makes the class a frozen dataclass and appends every field's help (and default) to its
docstring, so ``help(SolverConfig)`` and the CLI's ``--help`` (which reads the same metadata)
say the same thing. ``check`` raises ``ValueError`` naming the config, the field, what was
expected and what was received.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["check", "check_choice", "config", "field_choices", "field_help", "finite", "results_settings", "setting"]

T = TypeVar("T")


def setting(default: Any = dataclasses.MISSING, help: str = "", *,
            choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
            factory: Callable[[], Any] | None = None, shapes_results: bool = True, added: bool = False) -> Any:
    """A dataclass field with ``help`` (and optional ``choices``: names, or a function that lists
    them when asked, for a registry that may grow after import) in its metadata; ``shapes_results``
    False marks a field that changes where a run goes but not what it computes beyond rounding (the
    device): :func:`results_settings` leaves it out. ``added`` marks a field added after results
    were first stored, whose default computes what runs without it did: left out of
    :func:`results_settings` at its default, so that those results stay valid."""
    if choices is not None and not callable(choices):
        choices = tuple(choices)
    metadata = {"help": help, "choices": choices, "shapes_results": shapes_results, "added": added}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def results_settings(cfg: Any) -> Any:
    """``dataclasses.asdict(cfg)`` without the fields marked ``shapes_results=False`` and the
    ``added`` ones at their default, nested configs included: what stored results are tied to, so
    that a run resumes on another device and with a newer metaif."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    return {f.name: results_settings(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
            if f.metadata.get("shapes_results", True)
            and not (f.metadata.get("added") and getattr(cfg, f.name) == f.default)}


def field_choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The names field ``f`` may take now (``None``: any value)."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def field_help(cls: type, name: str) -> str:
    """The help text of field ``name`` of config class ``cls``."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    return f"{f.type}()" if f.default_factory is not dataclasses.MISSING else "required"


def config(cls: type[T]) -> type[T]:
    """Frozen dataclass whose docstring lists each field with its help and default."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    lines = [f"    {f.name}: {f.metadata.get('help', '')} (default {_default_text(f)})"
             for f in dataclasses.fields(cls) if f.metadata.get("help")]
    if lines:
        cls.__doc__ = (cls.__doc__ or cls.__name__).rstrip() + "\n\n    Fields:\n" + "\n".join(lines) + "\n"
    return cls


def check(ok: bool, owner: object, name: str, expected: str, value: Any) -> None:
    """Raise ``ValueError("Owner.name must be <expected>, got <value>")`` unless ``ok``."""
    if not ok:
        label = owner if isinstance(owner, str) else type(owner).__name__
        raise ValueError(f"{label}.{name} must be {expected}, got {value!r}")


def check_choice(owner: object, name: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    check(value in choices, owner, name, f"one of {', '.join(map(repr, choices))}", value)


def finite(value: Any) -> bool:
    """A real, finite number (bools and complex numbers are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
