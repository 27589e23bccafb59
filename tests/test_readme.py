"""Every Python block of the README runs as written, in a fresh interpreter, in under 5 minutes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each block runs in a fresh interpreter

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path):
    done = subprocess.run([sys.executable, "-c", BLOCKS[index]], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{done.stderr[-3000:]}"


DATA = Path(os.environ.get("METAIF_DATA", README.parent.parent / "shared" / "data"))
EXPERIMENTS = README.parent / "benchmarks" / "experiments.md"
#: what makes a documented command small; every solver setting stays at its default
SMALLER = ["--train-tasks", "40", "--test-tasks", "20", "--steps", "10", "--channels", "4", "--score-tasks", "5",
           "--polish", "10", "--seeds", "0", "--protocols", "harmful"]
SOLVER_FLAGS = {"--rtol", "--max-iter", "--damping", "--retries", "--on-failure", "--solver"}


def documented_command(path: Path, dataset: str) -> list[str]:
    """The first ``metaif experiment table1 --dataset <dataset>`` command of a document, as arguments."""
    text = path.read_text().replace("\\\n", " ")
    found = re.search(rf"metaif (experiment table1 --dataset {dataset}[^`\n]*)", text)
    assert found, f"{path.name} shows no table1 command on {dataset}"
    return found.group(1).split()


@pytest.mark.parametrize("dataset,document", [("omniglot", README), ("mnist", EXPERIMENTS)])
def test_a_documented_command_finishes_with_default_tolerances(dataset, document, tmp_path):
    """The Omniglot command of the README and the MNIST one of benchmarks/experiments.md, made small
    (fewer tasks, steps and channels) but with their solver settings as written: no numerical error."""
    if not (DATA / dataset).is_dir():
        pytest.skip(f"no {dataset} data at {DATA} (set METAIF_DATA)")
    args = documented_command(document, dataset)
    args[args.index("--root") + 1] = str(DATA / dataset)
    args = [a for i, a in enumerate(args) if a != "--out" and (i == 0 or args[i - 1] != "--out")]
    assert not SOLVER_FLAGS & set(args), args
    done = subprocess.run([sys.executable, "-m", "metaif", *args, *SMALLER, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| task | task-IF |" in (tmp_path / "run" / "table1.md").read_text()
