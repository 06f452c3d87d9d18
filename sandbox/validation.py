"""Small checks shared by the sandbox fakes."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

from email_validator import EmailNotValidError, validate_email


def is_valid_email(value: object) -> bool:
    """Return True when value is a syntactically valid address on a public-style domain."""
    if not isinstance(value, str):
        return False
    try:
        # No DNS here (no network), but special-use domains such as .test / .localhost are refused,
        # as a real provider would refuse them.
        validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def normalise_email(value: str) -> str:
    """Return the key a provider files an address under (trimmed, lower-cased)."""
    return value.strip().lower()


def stable_digits(value: str, length: int = 17) -> str:
    """Return a numeric id derived from value, the same on every run."""
    number = int(hashlib.sha256(value.encode()).hexdigest(), 16)
    return str(10 ** (length - 1) + number % (9 * 10 ** (length - 1)))


def stable_token(prefix: str, value: str, length: int = 16) -> str:
    """Return a prefixed hex id derived from value, the same on every run."""
    return prefix + hashlib.sha256(value.encode()).hexdigest()[:length]


def parse_json_object(raw: bytes) -> dict[str, Any] | None:
    """Return the body as a JSON object, or None when it is not one."""
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def is_number(value: object) -> bool:
    """Return True for JSON numbers (bool is not a number on the wire)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def undo_of_write(lock: threading.Lock, records: dict[str, Any], body: Any) -> Callable[[], None]:
    """For a silent loss: what undoes the write `body` is about to make to `records` (keyed by normalised email),
    restoring the record as it was before, or removing it if there was none."""
    email = (
        normalise_email(body["email"])
        if isinstance(body, dict) and isinstance(body.get("email"), str)
        else ""
    )
    with lock:
        before = copy.deepcopy(records.get(email))

    def undo() -> None:
        with lock:
            if before is None:
                records.pop(email, None)
            else:
                records[email] = before

    return undo
