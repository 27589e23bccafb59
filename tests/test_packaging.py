"""The wheel installs and works in a fresh virtual environment that has only torch: the core needs
torch, numpy and tqdm; the data sets and plots say which extra they need."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = """
import torch, metaif
from metaif import ops, reference
g = torch.randn(2, 3, 4, dtype=torch.float64)
q_out = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
q_in = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
e = torch.rand(3, 4, dtype=torch.float64)
torch.testing.assert_close(ops.kfe_ihvp(g, q_out, q_in, e, 0.1), reference.kfe_ihvp(g, q_out, q_in, e, 0.1))
import metaif.influence, metaif.meta  # the engine imports without the experiments extra
from metaif.data import load_digits
from metaif.utils.extras import MissingExtra
try:
    load_digits()
except MissingExtra as err:
    assert "pip install 'metaif[experiments]'" in str(err), err
else:
    raise AssertionError("digits loaded without scikit-learn?")
print("wheel ok", metaif.__file__)
"""


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_in_fresh_venv(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("metaif-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode()
        assert any(n.startswith("metaif/_C") and n.endswith(".so") for n in zf.namelist())
        assert not any(n.startswith("metaif/_emulate") for n in zf.namelist())  # test-only ops stay out
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    pin = f"Requires-Dist: torch<{major}.{int(minor) + 1},>={major}.{minor}"
    assert pin in metadata, metadata
    core = sorted(line.split()[1].split("<")[0].split(">")[0] for line in metadata.splitlines()
                  if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert core == ["numpy", "torch", "tqdm"], core
    assert 'Requires-Dist: scikit-learn>=1.0; extra == "experiments"' in metadata, metadata

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}")
    run(python, "-m", "pip", "install", "-q", wheel)
    out = run(python, "-c", SMOKE, cwd=tmp_path)
    assert "wheel ok" in out and str(venv) in out
