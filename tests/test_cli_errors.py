"""Every user error of the CLI ends in one line on stderr and a distinct exit code, before any
work starts where the flags alone show it; resumed runs refuse results of other settings; an
output folder has one user at a time."""

import os
import signal
import subprocess
import sys
import time

import pytest

from metaif import cli

TRAIN = ["--train-tasks", "12", "--test-tasks", "6", "--steps", "2", "--meta-batch", "4", "--quiet"]
TINY = [*TRAIN, "--score-tasks", "4", "--polish", "2"]


def run_cli(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("flags, message", [
    (["--damping", "-1"], "damping must be a finite number >= 0, got -1"),
    (["--max-iter", "0"], "max_iter must be an integer >= 1, got 0"),
    (["--fraction", "2"], "fraction must be a share in (0, 1), got 2"),
    (["--fraction", "-1"], "fraction must be a share in (0, 1)"),
    (["--polish", "-1"], "polish must be an integer >= 0, got -1"),
    (["--levels", "tasks"], "levels must be one or both of task, instance"),
    (["--fractions", "0.2"], "--fractions sets the points of a removal curve"),
    (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
    (["--gamma", "nan"], "gamma must be a finite number >= 0, got nan"),
    (["--dataset", "omniglot"], "root must be the folder with the omniglot files"),
    (["--config", "/nonexistent/config.json"], "--config /nonexistent/config.json: no such file"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_settings_stop_before_any_work(tmp_path, capsys, flags, message):
    began = time.perf_counter()
    code, err = run_cli(capsys, "experiment", "table1", "--out", str(tmp_path / "o"), *TINY, *flags)
    assert code == 2 and message in err[-1] and not any("Traceback" in line for line in err)
    assert time.perf_counter() - began < 5 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("fractions, message", [("0.2,x", "--fractions must look like '0.1,0.3'"),
                                                ("0.2,1", "--fractions must be shares in (0, 1)")])
def test_curve_fractions_are_checked_before_any_work(tmp_path, capsys, fractions, message):
    code, err = run_cli(capsys, "experiment", "curate", "--out", str(tmp_path / "o"), *TINY, "--fractions", fractions)
    assert code == 2 and message in err[-1] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags, message", [
    (["--remove-tasks", "99999"], "--remove-tasks: 99999 is out of range"),
    (["--remove-tasks", "-1"], "--remove-tasks: -1 is out of range"),
    (["--remove-train", "0:5"], "--remove-train: 0:5 is out of range"),
    (["--remove-val", "x"], "instances must look like 'position:index,...'"),
])
def test_edit_items_are_checked_before_training(tmp_path, capsys, flags, message):
    code, err = run_cli(capsys, "edit", "--out", str(tmp_path / "o"), *TINY, *flags)
    assert code == 2 and message in err[-1] and not (tmp_path / "o" / "model").exists()


def test_damaged_data_and_unusable_output_folders(tmp_path, capsys):
    root = tmp_path / "omniglot"
    root.mkdir()
    (root / "broken.zip").write_bytes(b"not a zip")
    code, err = run_cli(capsys, "train", "--dataset", "omniglot", "--root", str(root), "--out", str(tmp_path / "o"),
                        "--quiet")
    assert code == 3 and "not a valid zip file" in err[-1]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, err = run_cli(capsys, "train", "--out", str(a_file / "sub"), *TRAIN)
    assert code == 4 and "cannot create the output folder" in err[-1]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        code, err = run_cli(capsys, "train", "--out", str(locked), *TRAIN)
        assert code == 4 and "not writable" in err[-1]


def test_a_busy_folder_is_refused_naming_its_holder(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".metaif.lock").write_text(f"{os.getppid()} metaif score --out {out}\n")  # a live process
    code, err = run_cli(capsys, "train", "--out", str(out), *TRAIN)
    assert code == 4 and f"in use by process {os.getppid()}" in err[-1]
    (out / ".metaif.lock").write_text("999999999 gone\n")  # a dead holder's lock is taken over
    assert run_cli(capsys, "train", "--out", str(out), *TRAIN)[0] == 0
    assert not (out / ".metaif.lock").exists()


@pytest.mark.slow
def test_resume_refuses_other_settings_and_force_recomputes(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert run_cli(capsys, "score", "--out", out, *TINY)[0] == 0
    code, err = run_cli(capsys, "score", "--out", out, *TINY, "--lr", "0.003")
    assert code == 4 and "run.train.lr: 0.001 -> 0.003" in err[-1] and "--force" in err[-1]
    code, err = run_cli(capsys, "score", "--out", out, *TINY, "--polish", "3")
    assert code == 4 and "polish.polish: 2 -> 3" in err[-1]
    assert run_cli(capsys, "score", "--out", out, *TINY, "--polish", "3", "--force")[0] == 0
    assert run_cli(capsys, "score", "--out", out, *TINY, "--polish", "3")[0] == 0  # now it resumes


def test_quick_does_not_override_given_flags():
    args = cli.build_parser().parse_args(["experiment", "table1", "--quick", "--train-tasks", "30", "--out", "x"])
    config = cli.config_from_args(args)
    assert config.run.train_tasks == 30 and config.run.train.steps == 50


@pytest.mark.slow
def test_sigint_and_a_second_run_on_the_same_folder(tmp_path):
    out = tmp_path / "o"
    long_run = [sys.executable, "-m", "metaif", "train", "--out", str(out), "--steps", "100000", "--meta-batch", "4",
                "--train-tasks", "12", "--test-tasks", "6", "--quiet"]
    # a suite started in the background by a non-interactive shell (nohup ... &) ignores SIGINT, and an
    # ignored signal is inherited across exec: the run under test gets the default disposition back
    first = subprocess.Popen(long_run, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120  # until it holds the lock (imports take long on a busy machine)
        while not (out / ".metaif.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(long_run, capture_output=True, text=True, timeout=120)
        assert second.returncode == 4 and f"in use by process {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:  # interrupt the training
            time.sleep(0.05)
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("metaif: interrupted; run the same command again to resume")
    assert not (out / ".metaif.lock").exists()
