"""Atomic writers: a crash in the middle of a write leaves the old file (or none), never half of
one; the ledger keeps finished entries across runs."""

import json
import os

import numpy as np
import pytest
import torch

from metaif.utils import io


class Crash(Exception):
    pass


def crash_on_replace(monkeypatch):
    def boom(src, dst):
        raise Crash("killed between the write and the rename")

    monkeypatch.setattr(io.os, "replace", boom)


@pytest.mark.parametrize("writer, payload", [
    (io.write_atomic, b"new bytes"),
    (io.write_json, {"new": 1}),
    (io.save_torch, {"lam": torch.ones(3)}),
    (lambda path, obj: io.save_npz(path, obj, {"k": 1}), {"a": np.ones(2)}),
    (lambda path, rows: io.write_csv(path, ["a"], rows), [[1], [2]]),
])
def test_a_crash_before_the_rename_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch, writer, payload):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with monkeypatch.context() as m:
        crash_on_replace(m)
        with pytest.raises(Crash):
            writer(target, payload)
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
    writer(target, payload)  # and without the crash the new content lands
    assert target.read_bytes() != b"old"


def test_a_crash_while_writing_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "fresh.json"

    def bad_fsync(fd):
        raise Crash("disk gone")

    monkeypatch.setattr(io.os, "fsync", bad_fsync)
    with pytest.raises(Crash):
        io.write_json(target, {"x": 1})
    assert os.listdir(tmp_path) == []


def test_written_files_round_trip(tmp_path):
    io.write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    io.save_torch(tmp_path / "t.pt", torch.arange(3))
    assert torch.equal(torch.load(tmp_path / "t.pt"), torch.arange(3))
    io.save_npz(tmp_path / "z.npz", {"a": torch.ones(2)}, {"note": "hi"})
    z = np.load(tmp_path / "z.npz")
    assert z["a"].tolist() == [1.0, 1.0] and json.loads(str(z["config"])) == {"note": "hi"}
    io.write_csv(tmp_path / "c.csv", ["a", "b"], [[1, 2]])
    assert (tmp_path / "c.csv").read_text().splitlines() == ["a,b", "1,2"]


def test_ledger_computes_each_key_once_and_survives_a_restart(tmp_path):
    calls = []
    ledger = io.Ledger(tmp_path / "ledger.json")
    assert ledger.run("a", lambda: calls.append("a") or 1) == 1
    assert ledger.run("a", lambda: calls.append("again") or 2) == 1
    restarted = io.Ledger(tmp_path / "ledger.json")
    assert restarted.run("a", lambda: calls.append("restart") or 3) == 1
    assert calls == ["a"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        io.write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
