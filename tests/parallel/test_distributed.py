"""Two and three CPU processes on loopback (gloo) against one: training gradients, task-IF,
instance-IF, scores, edits and total-Hessian products are the same bits (every sum is exact, over
chunks fixed by the data); a rank that dies stops the run with an error in bounded time."""

import os

import pytest
import torch
from torch.multiprocessing import ProcessExitedException

from metaif.parallel import World, launch
from tests.parallel.ranks import die_on_rank_one, influence_results, save_influence_results, train_in_own_folder

pytestmark = pytest.mark.slow  # every test starts processes

@pytest.mark.parametrize(("form", "ranks"), [("logistic", 2), ("logistic", 3), ("imaml", 2), ("maml", 3)])
def test_any_number_of_ranks_gives_the_bits_of_one(form, ranks, tmp_path):
    """The body, per-task and unrolled bindings (three ranks for two of them: a chunk per rank)."""
    single = influence_results(form, World())
    launch(ranks, save_influence_results, form, str(tmp_path))
    sharded = torch.load(tmp_path / f"{form}.pt")
    assert sharded.keys() == single.keys()
    for name, value in single.items():
        assert torch.equal(sharded[name], value), \
            f"{name} on {ranks} ranks: max |difference| {float((sharded[name] - value).abs().max()):.3g}"


def test_a_dead_rank_stops_the_run_with_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("METAIF_DIST_TIMEOUT", "30")
    with pytest.raises(ProcessExitedException, match="process 1 terminated with exit code 3"):
        launch(2, die_on_rank_one, str(tmp_path))
    waited = tmp_path / "rank0_seconds"
    assert not waited.exists() or float(waited.read_text()) < 30  # rank 0 stopped, or was stopped, in time
    assert os.environ["METAIF_DIST_TIMEOUT"] == "30"


def test_the_command_line_writes_the_same_files_on_one_two_and_three_processes(tmp_path):
    """`metaif score` (float32: train, polish, scores) with chunks small enough that every sum has
    partial sums on every rank: lambda, lambda*, the task and instance scores are the same bits on
    1, 2 and 3 processes."""
    import json

    import numpy as np

    from metaif.cli import main

    config = tmp_path / "chunks.json"
    config.write_text(json.dumps({"run": {}, "analysis": {"influence": {"chunk": 8, "image_chunk": 64}}}))
    # 24 tasks in chunks of 8: one chunk per rank on three; a short polish with the anchor given
    flags = ["score", "--config", str(config), "--steps", "10", "--train-tasks", "24", "--test-tasks", "8",
             "--score-tasks", "8", "--polish", "10", "--anchor", "1", "--quiet"]
    for nproc in (1, 2, 3):
        assert main([*flags, "--out", str(tmp_path / str(nproc)), "--nproc", str(nproc)]) == 0
    for nproc in (2, 3):
        one, many = tmp_path / "1", tmp_path / str(nproc)
        for name in ("model/lambda.pt", "model/lambda_star.pt"):
            assert torch.equal(torch.load(many / name), torch.load(one / name)), f"{name} on {nproc} processes"
        for name in ("task_scores.csv", "instance_scores.csv"):
            assert (many / name).read_bytes() == (one / name).read_bytes(), f"{name} on {nproc} processes"
        with np.load(one / "scores.npz") as a, np.load(many / "scores.npz") as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    assert not (tmp_path / "2" / ".metaif.lock").exists()


def test_a_run_stopped_on_some_processes_resumes_on_another_number(tmp_path):
    """Training stopped after 2 steps on 2 processes and extended to 4 on one (and from 1 to 3
    processes) resumes from the checkpoint and ends with the lambda of 4 steps on one process."""
    import json

    from metaif.cli import main

    flags = ["train", "--train-tasks", "12", "--test-tasks", "12", "--quiet"]
    assert main([*flags, "--steps", "4", "--out", str(tmp_path / "whole")]) == 0
    whole = torch.load(tmp_path / "whole" / "lambda.pt")
    for first, then in ((2, 1), (1, 3)):
        out = tmp_path / f"{first}-then-{then}"
        assert main([*flags, "--steps", "2", "--nproc", str(first), "--out", str(out)]) == 0
        saved = torch.load(out / "checkpoint.pt", weights_only=False)
        torch.save({**saved, "seconds": 1000.0}, out / "checkpoint.pt")  # marks the checkpoint as used
        assert main([*flags, "--steps", "4", "--nproc", str(then), "--out", str(out)]) == 0
        assert json.loads((out / "results.json").read_text())["train_seconds"] > 1000  # resumed, not restarted
        assert torch.equal(torch.load(out / "lambda.pt"), whole), f"{first} then {then} processes"


def test_two_torchrun_nodes_equal_two_local_ranks(tmp_path):
    """Two "nodes" on this machine, each `torchrun --nnodes 2 --node-rank k --nproc-per-node 1` with a
    c10d rendezvous on loopback (node 0 hosts the store, as on a cluster), run one training: the
    result is the one of a single process bit for bit; only rank 0 prints."""
    import socket
    import subprocess
    import sys

    from metaif.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = ["train", "--steps", "4", "--train-tasks", "12", "--test-tasks", "12", "--quiet"]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node",
         "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "metaif-test",
         "--rdzv-conf", f"is_host={int(node == 0)}", "-m", "metaif", *flags, "--out", str(tmp_path / "nodes")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert '"final_outer_loss"' in outputs[0] and '"final_outer_loss"' not in outputs[1], outputs
    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    assert torch.equal(torch.load(tmp_path / "nodes" / "lambda.pt"), torch.load(tmp_path / "one" / "lambda.pt"))


def test_ranks_that_see_different_output_folders_stop_before_any_work(tmp_path):
    """A resumable --out that rank 1 does not see (nodes without shared storage) would have it start
    afresh beside a resuming rank 0: the run stops with an output error (exit code 4) instead."""
    from metaif.cli import main

    assert main(["train", "--steps", "2", "--train-tasks", "8", "--test-tasks", "8", "--quiet",
                 "--out", str(tmp_path / "rank0")]) == 0
    before = (tmp_path / "rank0" / "lambda.pt").read_bytes()
    with pytest.raises(ProcessExitedException, match="exit code 4"):
        launch(2, train_in_own_folder, str(tmp_path))
    assert (tmp_path / "rank0" / "lambda.pt").read_bytes() == before
