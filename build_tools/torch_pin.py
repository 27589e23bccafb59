"""scikit-build-core metadata provider: runtime dependencies with torch pinned to the build's minor."""

from __future__ import annotations

from collections.abc import Mapping

# scikit-learn ships the embedded default data set (digits); pillow decodes Omniglot and
# mini-ImageNet images.
BASE_DEPENDENCIES = ["numpy>=1.22", "tqdm>=4.60", "scikit-learn>=1.0", "pillow>=9", "matplotlib>=3.5"]


def dynamic_metadata(field: str, settings: Mapping[str, object]) -> list[str]:
    if field != "dependencies":
        raise RuntimeError(f"torch_pin provides only 'dependencies', not {field!r}")
    if settings:
        raise RuntimeError(f"torch_pin takes no settings, got {sorted(settings)}")
    import torch

    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    return [f"torch>={major}.{minor},<{major}.{minor + 1}", *BASE_DEPENDENCIES]
