"""Command-line flags generated from config dataclasses: each flag sets one field, nested configs
included, with the field's type, help text, choices and the default of a base config, so that
``--help`` and ``help(SomeConfig)`` say the same thing."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from .config import field_choices

__all__ = ["Flag", "add_flags", "apply_flags", "set_fields"]


@dataclass(frozen=True)
class Flag:
    """``--name`` sets the field at ``path`` (field names from the outer config inwards)."""

    name: str
    path: tuple[str, ...]

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


def _field(config_type: type, path: tuple[str, ...]) -> dataclasses.Field:
    """The dataclass field at ``path`` under ``config_type``."""
    cls = config_type
    for name in path[:-1]:
        cls = next(f for f in dataclasses.fields(cls) if f.name == name).default_factory().__class__
    return next(f for f in dataclasses.fields(cls) if f.name == path[-1])


def _value_at(config: object, path: tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name)
    return config


def _parser_type(field: dataclasses.Field):
    kind = str(field.type).replace(" ", "")
    if kind.startswith("tuple[int"):
        return lambda text: tuple(int(x) for x in text.split(","))
    if kind.startswith("tuple[float"):
        return lambda text: tuple(float(x) for x in text.split(","))
    if kind.startswith("tuple[str"):
        return lambda text: tuple(text.split(","))
    return {"int": int, "float": float, "float|None": float}.get(kind, str)


def add_flags(parser: argparse.ArgumentParser, flags: list[Flag], base: object) -> None:
    """One option per flag on the fields of ``base``'s class, typed, with the field's help and
    choices and ``base``'s value as the default shown (the option itself defaults to None: absent
    leaves the config's value)."""
    for flag in flags:
        field = _field(type(base), flag.path)
        default = _value_at(base, flag.path)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if str(field.type) == "bool":  # a switch
            parser.add_argument(f"--{flag.name}", action="store_const", const=True, default=None,
                                help=f"{field.metadata.get('help', '')} (default: {'on' if default else 'off'})")
            continue
        choices = field_choices(field)
        parser.add_argument(f"--{flag.name}", type=_parser_type(field), choices=choices, default=None,
                            metavar=None if choices else flag.name.upper(),
                            help=f"{field.metadata.get('help', '')} (default: {shown})")


def set_fields(config, values: dict[tuple[str, ...], object]):
    """``config`` with every ``path: value`` set, one ``replace`` per config (validation sees the
    final combination, not a half-updated one)."""
    direct = {path[0]: value for path, value in values.items() if len(path) == 1}
    nested: dict[str, dict] = {}
    for path, value in values.items():
        if len(path) > 1:
            nested.setdefault(path[0], {})[path[1:]] = value
    direct.update({name: set_fields(getattr(config, name), sub) for name, sub in nested.items()})
    return replace(config, **direct)


def apply_flags(args: argparse.Namespace, flags: list[Flag], base, also: dict[str, tuple[str, ...]] | None = None):
    """``base`` with every flag the user gave applied; ``also`` maps a flag name to a second path
    its value sets too (e.g. one seed for the data and the training)."""
    values = {}
    for flag in flags:
        value = getattr(args, flag.dest, None)
        if value is not None:
            values[flag.path] = value
            if also and flag.name in also:
                values[also[flag.name]] = value
    return set_fields(base, values) if values else base
