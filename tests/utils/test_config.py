"""Config fields carry their help once: docstrings and the CLI read it; checks name the field."""

import dataclasses

import pytest

from metaif.linalg import SolverConfig
from metaif.utils.config import check, config, field_help, setting


@config
class Example:
    """An example."""

    size: int = setting(3, "how many")
    mode: str = setting("a", "which one", choices=("a", "b"))

    def __post_init__(self) -> None:
        check(self.size >= 1, self, "size", "an integer >= 1", self.size)


def test_fields_carry_help_and_the_docstring_lists_them():
    assert field_help(Example, "size") == "how many"
    assert "size: how many (default 3)" in Example.__doc__
    assert dataclasses.fields(Example)[1].metadata["choices"] == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Example().size = 4
    with pytest.raises(ValueError, match="Example.size must be an integer >= 1, got 0"):
        Example(size=0)


def test_library_configs_document_every_field():
    for f in dataclasses.fields(SolverConfig):
        assert f.metadata.get("help"), f.name
        assert f"{f.name}:" in SolverConfig.__doc__


def test_a_setting_added_later_leaves_older_results_valid_at_its_default():
    """Results stored before a setting existed were made at its default: the fingerprint leaves an
    ``added`` setting out there, and keeps it (a different computation) anywhere else."""
    from metaif.experiments.run import RunConfig
    from metaif.utils.config import results_settings

    before = results_settings(RunConfig())
    assert "rotations" not in before and "widths" not in before and "hidden" in before
    turned = results_settings(RunConfig(rotations=True, model="resnet12", widths=(8, 8, 16, 16)))
    assert turned["rotations"] is True and turned["widths"] == (8, 8, 16, 16)
