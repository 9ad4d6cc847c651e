"""Fixtures of the pre-training tests."""

import pytest
from pretrain_helpers import synthetic_runs


@pytest.fixture
def runs():
    return synthetic_runs()
