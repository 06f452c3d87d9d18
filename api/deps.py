"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from api.security import RateLimiter, check_admin_token, client_ip
from ingest.consent import RequestContext
from ingest.db import Database, utcnow
from ingest.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


SettingsDep = Annotated[Settings, Depends(_settings)]
DatabaseDep = Annotated[Database, Depends(_database)]


def _context(request: Request, settings: SettingsDep) -> RequestContext:
    user_agent = request.headers.get("user-agent")
    return RequestContext(
        received_at=utcnow(),
        ip=client_ip(request, settings),
        user_agent=user_agent[:512] if user_agent else None,
    )


ContextDep = Annotated[RequestContext, Depends(_context)]


def _rate_limit(request: Request, context: ContextDep) -> None:
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.check(context.ip or "unknown")


def _admin(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    check_admin_token(settings, authorization)


RateLimited = Depends(_rate_limit)
AdminOnly = Depends(_admin)
