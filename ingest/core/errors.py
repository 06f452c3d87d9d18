"""Domain exceptions: one type per failure kind, mapped to HTTP codes by the API."""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain refuses; the message is safe to show the caller."""


class InvalidField(DomainError):
    """One input field is invalid; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Conflict(DomainError):
    """The request contradicts what is already stored (e.g. one event_id, two emails)."""


class NotFound(DomainError):
    """The thing the request names does not exist."""


class NotConfigured(DomainError):
    """A feature the request needs is not configured on this server."""
