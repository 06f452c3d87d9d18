"""Structured logs go to the stderr of the moment, as JSON lines."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from ingest.core.logs import configure_logging


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level


def test_a_log_after_the_stderr_it_was_configured_under_closed_goes_to_the_current_one(
    restored_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CLI runner swaps in a temporary stderr, the command configures logging under it, then the runner closes it;
    # threads that outlive the command (an API's) still log: to the stderr there is now, never to the closed one.
    temporary, current = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", temporary)
    configure_logging("INFO")
    logging.getLogger("ingest.test").info("during the command")
    said_during = temporary.getvalue()
    temporary.close()
    monkeypatch.setattr(sys, "stderr", current)
    logging.getLogger("ingest.test").warning("after it", extra={"event_id": "e-1"})
    assert json.loads(said_during)["message"] == "during the command"
    line = json.loads(current.getvalue())
    assert (line["message"], line["level"], line["event_id"]) == ("after it", "WARNING", "e-1")
