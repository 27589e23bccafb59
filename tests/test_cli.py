"""The metaif command: train writes its results and config; bench runs a filtered quick table."""

import json

from metaif import bench, cli


def test_train_command_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits", "--steps", "4", "--meta-batch", "4", "--train-tasks", "20",
                     "--test-tasks", "10", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["meta_test_accuracy"]["mean"] <= 1 and results["form"] == "anil"
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["steps"] == 4 and (out / "checkpoint.pt").exists()
    assert json.loads(capsys.readouterr().out)["dataset"] == "digits"


def test_bench_quick_filtered(tmp_path):
    result = bench.main(["--quick", "--only", "woodbury", "--repeats", "1", "--json", str(tmp_path / "b.json")])
    assert result == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert rows and rows[0]["op"] == "woodbury_solve" and rows[0]["speedup"] > 0
