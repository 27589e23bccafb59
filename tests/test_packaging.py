"""The wheel users install: built by build_tools/build_wheel.sh (pip, then auditwheel), tagged
cp310-abi3-manylinux, requiring torch >= 2.10 rather than one minor; it installs and runs every op
against metaif.reference in a fresh virtual environment that has only torch (tests/wheel_smoke.py).
The core needs torch, numpy and tqdm; the data sets and plots say which extra they need."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installs_in_fresh_venv(tmp_path):
    run(ROOT / "build_tools" / "build_wheel.sh", tmp_path / "dist")
    (wheel,) = (tmp_path / "dist").glob("metaif-*.whl")
    assert re.fullmatch(r"metaif-[\d.]+-cp310-abi3-manylinux_2_\d+_x86_64\.whl", wheel.name), wheel.name
    # auditwheel's own reading: the symbols allow the tag the wheel got, and the only libraries it
    # needs from outside the manylinux set are torch's (the torch wheel provides them)
    shown = json.loads(run(sys.executable, "-m", "auditwheel", "show", "--json", wheel))
    assert shown["sym_tag"] == wheel.name.split("-")[-1].removesuffix(".whl"), shown
    assert set(shown["external_libs"]) == {"libtorch_cpu.so"}, shown["external_libs"]
    assert not shown["unsupported_isa"], shown
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
        assert "metaif/_C.abi3.so" in names, names
        assert not any(n.startswith("metaif/_emulate") for n in names)  # test-only ops stay out
        assert not any(".libs/" in n for n in names), names  # nothing grafted: torch provides libtorch
    assert "Requires-Dist: torch>=2.10" in metadata, metadata
    core = sorted(line.split()[1].split("<")[0].split(">")[0] for line in metadata.splitlines()
                  if line.startswith("Requires-Dist:") and "extra ==" not in line)
    assert core == ["numpy", "torch", "tqdm"], core
    assert 'Requires-Dist: scikit-learn>=1.0; extra == "experiments"' in metadata, metadata

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}")
    run(python, "-m", "pip", "install", "-q", wheel)
    out = run(python, ROOT / "tests" / "wheel_smoke.py", cwd=tmp_path)
    assert "wheel ok" in out and str(venv) in out
