"""The API's own behaviour (probes, limits, security, the schema) on both store engines."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def store(engine: dict[str, Any]) -> dict[str, Any]:
    return engine
