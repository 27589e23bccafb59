"""The main job (`metaif demo`, the README's first command) end to end: it analyses and edits a
model at least as good as the one it trained, at a stationary point, and writes what it says."""

import json

import pytest

from metaif import cli

pytestmark = pytest.mark.slow  # the main job end to end


def test_the_demo_analyses_a_model_as_good_as_the_trained_one(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "results.json").read_text())
    trained, analysed, edited = (result[f"{k}_accuracy"] for k in ("trained", "analysed", "edited"))
    assert analysed["mean"] >= trained["mean"] - trained["ci95"]  # the polish must not overfit
    assert abs(edited["mean"] - analysed["mean"]) <= analysed["ci95"] and edited["ci95"] > 0
    assert result["stationarity"] < 5e-3 and result["removed_tasks"]
    for name in ("task_scores.csv", "instance_scores.csv", "task_scores.png", "instance_scores.png"):
        assert (out / name).stat().st_size > 0
    assert f"results, CSV tables and plots in {out}" in capsys.readouterr().out
