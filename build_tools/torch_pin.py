"""scikit-build-core metadata provider: runtime dependencies with torch pinned to the build's minor."""

from __future__ import annotations

from collections.abc import Mapping

# The core (ops, linalg, the influence engine) needs only these; the data sets, plots and the
# commands that use them come with the "experiments" extra (pyproject.toml).
BASE_DEPENDENCIES = ["numpy>=1.22", "tqdm>=4.60"]


def dynamic_metadata(field: str, settings: Mapping[str, object]) -> list[str]:
    if field != "dependencies":
        raise RuntimeError(f"torch_pin provides only 'dependencies', not {field!r}")
    if settings:
        raise RuntimeError(f"torch_pin takes no settings, got {sorted(settings)}")
    import torch

    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return [f"torch>={major}.{minor},<{major}.{minor + 1}", *BASE_DEPENDENCIES]
