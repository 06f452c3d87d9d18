"""Map validation and domain errors to clear 4xx answers whose message names the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ingest.core.errors import Conflict, DomainError, InvalidField, NotConfigured, NotFound
from ingest.payments.checkout import StripeUnavailable
from ingest.payments.demo_card import CardDeclined
from ingest.payments.webhooks import EventProcessingFailed
from ingest.reconcile.pull import SystemUnavailable
from ingest.store.database import DatabaseLocked
from ingest.store.writer import StoreUnavailable, WriterStopped


class FieldError(BaseModel):
    """One invalid field of a request."""

    field: str
    message: str


class ErrorOut(BaseModel):
    """Every error answer: a slug, a sentence fit to show, and for validation the fields at fault."""

    error: str
    message: str
    errors: list[FieldError] | None = None


_DESCRIPTIONS = {
    400: "the body is not JSON, or the request is refused as it stands",
    401: "the admin token is missing or wrong",
    403: "admin endpoints are off: ATTRIBUTION_ADMIN_TOKEN is not set",
    404: "not found",
    409: "conflicts with what is stored",
    413: "the body is over ATTRIBUTION_MAX_BODY_BYTES",
    415: "the body is not sent as JSON",
    429: "over the per-IP rate limit; see Retry-After",
    431: "request line and headers over 16 KiB or 100 fields",
    502: "Stripe could not be reached or refused the call",
    503: "the database cannot write now (see Retry-After), or the feature is not configured",
}


def declared(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the error shape."""
    return {code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in codes}


# Answers any request can get before a route runs (request limits) or when the store cannot write.
EVERY_ROUTE = declared(413, 415, 431, 503)
ADMIN_ROUTE = declared(401, 403)
BROWSER_ROUTE = declared(429)

CLIENT_CLOSED_REQUEST = 499  # nginx's code for a request whose client left before the answer

# Every DomainError the domain raises, answered here and nowhere else (checked in order: subclasses first).
_DOMAIN_STATUS: dict[type[DomainError], tuple[int, str]] = {
    CardDeclined: (status.HTTP_402_PAYMENT_REQUIRED, "card_declined"),
    StripeUnavailable: (status.HTTP_502_BAD_GATEWAY, "stripe_unavailable"),
    SystemUnavailable: (status.HTTP_502_BAD_GATEWAY, "system_unavailable"),
    InvalidField: (status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_request"),
    Conflict: (status.HTTP_409_CONFLICT, "conflict"),
    NotFound: (status.HTTP_404_NOT_FOUND, "not_found"),
    NotConfigured: (status.HTTP_503_SERVICE_UNAVAILABLE, "not_configured"),
}


def _error(
    code: int, error: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=code, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc[1:]] if loc and loc[0] == "body" else [str(part) for part in loc]
    return ".".join(parts) or "body"


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error["type"] == "json_invalid" for error in errors):
        return _error(status.HTTP_400_BAD_REQUEST, "malformed_json", "request body is not valid JSON")
    fields = [{"field": _field_name(tuple(error["loc"])), "message": error["msg"]} for error in errors]
    message = "; ".join(f"{item['field']}: {item['message']}" for item in fields)
    return _error(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid_request", message, errors=fields)


async def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    code, error = next(
        (value for kind, value in _DOMAIN_STATUS.items() if isinstance(exc, kind)),
        (status.HTTP_400_BAD_REQUEST, "bad_request"),
    )
    if isinstance(exc, InvalidField):
        return _error(code, error, str(exc), errors=[{"field": exc.field, "message": exc.message}])
    return _error(code, error, str(exc))


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_400_BAD_REQUEST:
        # FastAPI's answer to a body it could not decode at all (bytes that are not UTF-8, nesting deeper than the
        # JSON parser recurses); a body that decodes but is not JSON arrives as a RequestValidationError instead.
        return _error(status.HTTP_400_BAD_REQUEST, "malformed_json", "request body is not valid JSON")
    slug = {
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        429: "rate_limited",
    }
    return _error(
        exc.status_code, slug.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers
    )


async def _processing_failed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EventProcessingFailed)
    message = "processing this event failed; it is kept with its error and the next delivery retries it"
    return _error(
        status.HTTP_500_INTERNAL_SERVER_ERROR,
        "processing_failed",
        message,
        stripe_event_id=exc.stripe_event_id,
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    # The client went away (or the body limit cut it off, having answered 413): nobody reads this answer, and it
    # is no server error, so no traceback is logged.
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    # Browsers and Stripe read this: the storage's own words (file paths, hosts) stay in the log and the admin
    # status; the caller learns what to do.
    message = (
        "the service is stopping; try again shortly"
        if isinstance(exc, WriterStopped)
        else "the database cannot write now; nothing was stored, try again shortly"
    )
    return _error(status.HTTP_503_SERVICE_UNAVAILABLE, "unavailable", message, headers={"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on the app."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(EventProcessingFailed, _processing_failed)
    app.add_exception_handler(StoreUnavailable, _unavailable)  # WriterStopped too
    app.add_exception_handler(DatabaseLocked, _unavailable)
