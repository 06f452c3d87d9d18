"""FastAPI dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import stripe
from fastapi import Depends, Header, Request

from api.security import RateLimiter, check_admin_token, client_ip
from ingest.core.clock import utcnow
from ingest.core.errors import NotConfigured
from ingest.core.settings import Settings
from ingest.leads.consent import RequestContext
from ingest.payments.checkout import Checkout
from ingest.store.database import Database


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def _stripe(request: Request) -> stripe.StripeClient:
    client: stripe.StripeClient | None = request.app.state.stripe
    if client is None:
        raise NotConfigured("Stripe is not configured: set STRIPE_SECRET_KEY")
    return client


def _checkout(request: Request) -> Checkout:
    checkout: Checkout | None = request.app.state.checkout
    if checkout is None:
        raise NotConfigured("Stripe is not configured: set STRIPE_SECRET_KEY")
    return checkout


SettingsDep = Annotated[Settings, Depends(_settings)]
DatabaseDep = Annotated[Database, Depends(_database)]
StripeDep = Annotated[stripe.StripeClient, Depends(_stripe)]
CheckoutDep = Annotated[Checkout, Depends(_checkout)]


@dataclass(frozen=True)
class BrowserCall:
    """What a browser-facing route needs: settings, database and the server's stamp of the caller."""

    settings: Settings
    database: Database
    context: RequestContext


def _stamp(request: Request, settings: Settings) -> RequestContext:
    user_agent = request.headers.get("user-agent")
    return RequestContext(
        received_at=utcnow(),
        ip=client_ip(request, settings),
        user_agent=user_agent[:512] if user_agent else None,
    )


def _check_rate(request: Request, context: RequestContext) -> None:
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.check(context.ip or "unknown")


async def _browser_call(request: Request) -> BrowserCall:
    # One dependency rather than a chain: FastAPI's per-dependency cost is visible on the lead-capture hot path.
    settings: Settings = request.app.state.settings
    context = _stamp(request, settings)
    _check_rate(request, context)
    return BrowserCall(settings=settings, database=request.app.state.database, context=context)


async def _context(request: Request, settings: SettingsDep) -> RequestContext:
    return _stamp(request, settings)


async def _rate_limit(request: Request, settings: SettingsDep) -> None:
    _check_rate(request, _stamp(request, settings))


BrowserCallDep = Annotated[BrowserCall, Depends(_browser_call)]
ContextDep = Annotated[RequestContext, Depends(_context)]
RateLimited = Depends(_rate_limit)


async def _admin(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    check_admin_token(settings, authorization)


AdminOnly = Depends(_admin)
