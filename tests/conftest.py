"""Fixtures shared by every test (helpers live in tests/helpers.py)."""

from __future__ import annotations

import pytest
import torch

import metaif  # noqa: F401  (loads torch.ops.metaif)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
