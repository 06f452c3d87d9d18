"""Structured JSON logs: one object a line, carrying ids (event_id, delivery_id), never emails or phones."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record is emitted, not the one there at configuration: a CLI
    runner (Typer's, in tests) swaps in a temporary stderr and closes it after, while the API's threads still log."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass  # StreamHandler.__init__ assigns it; the stream is always the current stderr


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stderr as one JSON object."""
    handler = _StderrHandler()
    handler.setFormatter(
        JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"})
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
