"""Fixtures shared by tests/security."""

from __future__ import annotations

import pytest
from security_harness import principals


@pytest.fixture
def who(tmp_path):
    """name -> Principal of the harness's token file."""
    return principals(tmp_path)
