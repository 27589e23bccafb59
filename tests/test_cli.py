"""The metaif command: train writes its results and config; bench runs a filtered quick table."""

import json
import os
import re
import subprocess
import sys

import pytest

from metaif import bench, cli


def test_train_command_writes_results(tmp_path, capsys, monkeypatch):
    """A short run learns: meta-test accuracy above the untrained body's 95% interval (which is above
    chance, 1/5: the heads adapt even on random features). Without --out it writes to runs/train and
    says so first."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "train"
    assert cli.main(["train", "--dataset", "digits", "--split", "image", "--steps", "20", "--meta-batch", "8",
                     "--lr", "1e-2", "--train-tasks", "40", "--test-tasks", "100"]) == 0
    results = json.loads((out / "results.json").read_text())
    trained, untrained = results["meta_test_accuracy"], results["baseline_accuracy"]
    assert untrained["mean"] - untrained["ci95"] > 0.2, untrained
    assert trained["mean"] - trained["ci95"] > untrained["mean"] + untrained["ci95"], (trained, untrained)
    assert results["form"] == "anil"
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["steps"] == 20 and (out / "checkpoint.pt").exists()
    printed = capsys.readouterr()
    assert json.loads(printed.out)["dataset"] == "digits"
    assert printed.err.startswith("metaif train: output folder runs/train\n")


def test_train_reads_mini_imagenet_jpegs_as_pixel_codes(tmp_path, capsys):
    """mini-ImageNet's folder layout, 84x84 RGB JPEGs kept as 8-bit codes through a Conv-4 run: learns."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(6):
        folder = tmp_path / "mini" / "train" / f"n{c:02d}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 256, size=(1, 1, 3))
        for i in range(12):
            noise = rng.normal(0, 60, size=(84, 84, 3))
            Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.jpg")
    out = tmp_path / "run"
    assert cli.main(["train", "--dataset", "miniimagenet", "--root", str(tmp_path / "mini"), "--split", "image",
                     "--model", "conv4", "--channels", "8", "--steps", "3", "--meta-batch", "4", "--train-tasks", "8",
                     "--test-tasks", "8", "--queries", "2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta_test_accuracy"]["mean"] > 0.5  # 5-way: colours far apart, chance is 0.2
    capsys.readouterr()


def test_every_command_has_a_default_output_folder():
    assert [cli.default_out(c) for c in ("demo", "train", "score", "influence", "edit")] == \
        ["runs/demo", "runs/train", "runs/analysis", "runs/analysis", "runs/analysis"]
    assert cli.default_out("experiment", "table1") == "runs/table1"
    assert cli.default_out("experiment", "harmful", quick=True) == "runs/harmful-quick"


def test_a_logged_run_reports_its_stages_and_a_heartbeat(tmp_path):
    """stderr to a file, as under nohup: the command's stages beat (here every second) and end with a line."""
    log = tmp_path / "log"
    with open(log, "w") as err:
        code = subprocess.run([sys.executable, "-m", "metaif", "train", "--dataset", "digits", "--steps", "300",
                               "--meta-batch", "8", "--train-tasks", "40", "--test-tasks", "20", "--out",
                               str(tmp_path / "run")], stdout=subprocess.DEVNULL, stderr=err,
                              env={**os.environ, "METAIF_HEARTBEAT": "1"}, timeout=300).returncode
    text = log.read_text()
    assert code == 0, text
    beats = re.findall(r"^\[metaif \d\d:\d\d:\d\d\] train › meta-train: (\d+)/300, loss=[\d.]+, elapsed \d+s", text,
                       re.MULTILINE)
    assert len(beats) >= 2 and int(beats[0]) < int(beats[-1]) <= 300, text
    assert re.search(r"meta-train: done, 300/300, loss=[\d.]+ in \d+s", text), text


@pytest.mark.slow
def test_bench_quick_filtered(tmp_path):
    result = bench.main(["--quick", "--only", "woodbury", "--repeats", "1", "--json", str(tmp_path / "b.json")])
    assert result == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    # the fused kernel against its PyTorch composition: about 50x here, so a ratio below 1 is a
    # defect of the kernel or of the benchmark, not noise
    assert rows and rows[0]["op"] == "woodbury_solve" and rows[0]["speedup"] > 1, rows[0]


def test_a_solver_registered_after_import_is_a_method_and_a_flag():
    """The solver choices are read from the registry when needed, not copied at import."""
    from metaif.linalg import SOLVERS, SolverConfig, register_solver
    from metaif.linalg.dense import DenseSolver

    @register_solver
    class LateSolver(DenseSolver):
        name = "late-test-solver"

    try:
        assert SolverConfig(method="late-test-solver").method == "late-test-solver"
        args = cli.build_parser().parse_args(["score", "--solver", "late-test-solver", "--out", "x"])
        assert cli.config_from_args(args).analysis.influence.solver.method == "late-test-solver"
    finally:
        del SOLVERS["late-test-solver"]


def test_the_experiment_names_are_the_registered_experiments():
    from metaif.experiments.commands import EXPERIMENTS

    assert cli.EXPERIMENT_NAMES == tuple(EXPERIMENTS)


def test_curve_fractions_are_sorted_after_the_share_zero():
    assert cli._fractions("0.4,0.2,0.4", "curate") == (0.0, 0.2, 0.4)
    assert cli._fractions(None, "harmful") is None
