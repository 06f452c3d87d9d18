"""A loopback stand-in for a chat webhook (Slack-compatible incoming webhook) that alerts are POSTed to.

It keeps every alert it accepted, answers 503 while `down` (or drops the connection with `refuse`), and refuses
a body without a `text` field with 400, as Slack does.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

ALERT_PATH = "/services/alerts"


class AlertReceiver:
    """Start with `with AlertReceiver() as receiver:`; `receiver.url` is the webhook URL."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.down = False  # answer 503 to every POST
        self.refuse = False  # close the connection without an answer
        self.received: list[dict[str, Any]] = []  # alerts accepted (2xx), in arrival order
        self.attempts = 0  # POSTs seen, accepted or not
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                with receiver._lock:
                    receiver.attempts += 1
                    down, refuse = receiver.down, receiver.refuse
                if refuse:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if self.path != ALERT_PATH:
                    self._answer(404, b"no_service")
                    return
                if down:
                    self._answer(503, b"service_unavailable")
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._answer(400, b"invalid_payload")
                    return
                if not isinstance(body, dict) or not isinstance(body.get("text"), str):
                    self._answer(400, b"no_text")
                    return
                with receiver._lock:
                    receiver.received.append(body)
                self._answer(200, b"ok")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The webhook URL to set as ATTRIBUTION_ALERT_WEBHOOK_URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{ALERT_PATH}"

    def alerts(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The alerts accepted so far (of one `alert` kind when given)."""
        with self._lock:
            return [item for item in self.received if kind is None or item.get("alert") == kind]

    def start(self) -> AlertReceiver:
        """Serve from a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> AlertReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
