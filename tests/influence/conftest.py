"""Fixtures of the influence tests."""

import pytest

from tests.helpers import make_taskset


@pytest.fixture(scope="package")
def small_tasks():
    return make_taskset(3)
