"""Fixtures of the service tests (helpers: ``service_harness``)."""

from __future__ import annotations

import pytest
from service_harness import make_api


@pytest.fixture
def api(tmp_path):
    a = make_api(str(tmp_path / "xpod.db"))
    yield a
    a.close()
