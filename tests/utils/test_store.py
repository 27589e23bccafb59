"""Stages resume only their own work: an interrupted stage's partial files are kept for the same
settings and refused (or, with force, cleared) under any other."""

import pytest

from metaif.utils.store import Stage, StaleResults


def _stage(tmp_path, steps, force=False):
    return Stage(tmp_path, "train", {"lr": 0.1, "seed": steps}, ["checkpoint.pt"], force)


def test_an_interrupted_stage_resumes_under_its_settings_and_is_refused_under_others(tmp_path):
    assert _stage(tmp_path, 1).open() is None
    (tmp_path / "checkpoint.pt").write_text("partial")           # then the run is killed
    assert _stage(tmp_path, 1).open() is None                      # the same command resumes ...
    assert (tmp_path / "checkpoint.pt").read_text() == "partial"  # ... from the partial file
    with pytest.raises(StaleResults, match="seed: 1 -> 2"):
        _stage(tmp_path, 2).open()
    assert _stage(tmp_path, 2, force=True).open() is None
    assert not (tmp_path / "checkpoint.pt").exists()
    record = _stage(tmp_path, 2).finish(steps=5)
    assert _stage(tmp_path, 2).open() == record and record["steps"] == 5


def test_files_without_a_record_are_not_trusted(tmp_path):
    (tmp_path / "checkpoint.pt").write_text("from somewhere else")
    with pytest.raises(StaleResults, match="checkpoint.pt without a record of their settings"):
        _stage(tmp_path, 1).open()
