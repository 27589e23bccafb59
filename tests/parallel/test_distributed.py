"""Two CPU processes on loopback (gloo) against one: training gradients, task-IF, instance-IF,
scores, edits and total-Hessian products agree up to the reduction order (float64: 1e-10 relative);
a rank that dies stops the run with an error in bounded time."""

import os

import pytest
import torch
from torch.multiprocessing import ProcessExitedException

from metaif.parallel import World, launch
from tests.parallel.ranks import die_on_rank_one, influence_results, save_influence_results, train_in_own_folder

pytestmark = pytest.mark.slow  # every test starts processes

TOLERANCE = dict(rtol=1e-10, atol=1e-12)


def test_spans_cover_every_item_once_and_owners_agree():
    for size in (1, 2, 3, 4):
        for n in (4, 7, 10):
            spans = [World(rank, size).span(n) for rank in range(size)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            assert max(e - s for s, e in spans) - min(e - s for s, e in spans) <= 1
            owner = World(0, size).owner(torch.arange(n), n)
            assert all(spans[int(r)][0] <= i < spans[int(r)][1] for i, r in enumerate(owner))


@pytest.mark.parametrize("form", ["logistic", "imaml", "maml"])  # the body, per-task and unrolled bindings
def test_two_ranks_equal_one(form, tmp_path):
    launch(2, save_influence_results, form, str(tmp_path))
    sharded = torch.load(tmp_path / f"{form}.pt")
    single = influence_results(form, World())
    assert sharded.keys() == single.keys()
    for name, value in single.items():
        torch.testing.assert_close(sharded[name], value, **TOLERANCE, msg=lambda m: f"{name}: {m}")


def test_a_dead_rank_stops_the_run_with_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("METAIF_DIST_TIMEOUT", "30")
    with pytest.raises(ProcessExitedException, match="process 1 terminated with exit code 3"):
        launch(2, die_on_rank_one, str(tmp_path))
    waited = tmp_path / "rank0_seconds"
    assert not waited.exists() or float(waited.read_text()) < 30  # rank 0 stopped, or was stopped, in time
    assert os.environ["METAIF_DIST_TIMEOUT"] == "30"


def test_the_command_line_shares_a_run_over_two_processes(tmp_path):
    from metaif.cli import main

    flags = ["--steps", "4", "--train-tasks", "12", "--test-tasks", "12", "--quiet"]
    assert main(["train", "--out", str(tmp_path / "one"), *flags]) == 0
    assert main(["train", "--out", str(tmp_path / "two"), *flags, "--nproc", "2"]) == 0
    one, two = (torch.load(tmp_path / name / "lambda.pt") for name in ("one", "two"))
    torch.testing.assert_close(two, one, rtol=0, atol=1e-6)  # float32 sums in another order
    assert not (tmp_path / "two" / ".metaif.lock").exists()


def test_two_torchrun_nodes_equal_two_local_ranks(tmp_path):
    """Two "nodes" on this machine, each `torchrun --nnodes 2 --node-rank k --nproc-per-node 1` with a
    c10d rendezvous on loopback (node 0 hosts the store, as on a cluster), run one training: the
    result is the one of `--nproc 2` bit for bit (the same ranks add the same partial sums) and
    within float32 reduction order of one process; only rank 0 prints."""
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
    assert main([*flags, "--out", str(tmp_path / "local"), "--nproc", "2"]) == 0
    assert main([*flags, "--out", str(tmp_path / "one")]) == 0
    nodes_lam, local_lam, one_lam = (torch.load(tmp_path / name / "lambda.pt") for name in ("nodes", "local", "one"))
    assert torch.equal(nodes_lam, local_lam)
    torch.testing.assert_close(nodes_lam, one_lam, rtol=0, atol=1e-6)


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
