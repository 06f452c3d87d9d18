"""Lead capture runs on both engines: the embedded DuckDB file and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def store(engine: dict[str, Any]) -> dict[str, Any]:
    return engine
