"""Fixtures shared by every test (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os

# One thread per process, set before torch loads (subprocesses inherit it): the problems are
# small, and spin-waiting OpenMP threads of parallel test processes would fight over the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import metaif  # noqa: F401  (loads torch.ops.metaif)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Property tests: a bounded default keeps the suite fast; `--hypothesis-profile=long` explores more.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("default", max_examples=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")
