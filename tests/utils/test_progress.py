"""Progress in a log (stderr not a terminal): stage lines, the heartbeat, inherited stages."""

import re
import time

import pytest

from metaif.utils import progress


@pytest.fixture
def fast_heartbeat(monkeypatch):
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(progress, "LINE_MIN_S", 0.0)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("[metaif ")]


def test_a_logged_stage_beats_while_it_runs_and_ends_with_one_line(fast_heartbeat, capsys):
    with progress.stage(desc="outer", bar=False):
        with progress.stage(total=4, desc="polish", cap=True) as bar:
            for _ in range(4):
                time.sleep(0.3)
                bar.update()
                bar.set_postfix(loss="0.25")
    out = lines(capsys.readouterr().err)
    beats = [line for line in out if "outer › polish:" in line]
    assert len(beats) >= 2, out  # 1.2 s at a 0.2 s heartbeat (the thread may wake late on a busy machine)
    assert any(re.search(r"polish: \d/4, loss=0\.25, elapsed \d+s, at most ~\d+s left", line) for line in beats), beats
    assert any(re.search(r"polish: done, 4/4, loss=0\.25 in \d+s$", line) for line in out), out
    assert out[-1].split("] ")[1].startswith("outer: done in ")


def test_heartbeats_stop_with_the_stage_and_are_at_most_one_per_period(fast_heartbeat, capsys):
    with progress.stage(total=10, desc="work") as bar:
        for _ in range(10):
            time.sleep(0.05)
            bar.update()
    time.sleep(0.5)
    out = lines(capsys.readouterr().err)
    assert out[-1].split("] ")[1].startswith("work: done, 10/10")  # nothing after the stage closed
    assert len(out) <= 1 + 0.5 / 0.2 + 1


def test_an_inheriting_stage_shows_only_inside_a_shown_one(fast_heartbeat, capsys):
    with progress.stage(total=1, desc="cg", disable=None) as bar:
        assert not bar.shown
    with progress.stage(desc="command", bar=False):
        with progress.stage(total=1, desc="cg", disable=None) as bar:
            assert bar.shown
    with progress.stage(desc="hidden", disable=True):
        with progress.stage(total=1, desc="cg", disable=None) as bar:
            assert not bar.shown
    assert "hidden" not in capsys.readouterr().err


def test_a_stage_over_an_iterable_counts_and_closes(fast_heartbeat, capsys):
    shown = progress.stage(range(3), desc="tasks")
    assert list(shown) == [0, 1, 2] and shown.n == 3 and shown.closed
    assert not progress._open


def test_a_stage_ended_by_an_error_says_so(fast_heartbeat, capsys):
    with pytest.raises(ValueError), progress.stage(total=5, desc="cg") as bar:
        bar.update(2)
        raise ValueError("indefinite")
    assert lines(capsys.readouterr().err)[-1].split("] ")[1].startswith("cg: stopped by ValueError, 2/5")
