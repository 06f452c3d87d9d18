"""The demo checkout, mounted only with ATTRIBUTION_DEMO=true: pages, their config, and a Stripe.js stand-in aid.

Stripe.js comes from localstripe itself (STRIPE_API_BASE + /js.stripe.com/v3/, its stand-in for
https://js.stripe.com/v3/), so the demo pays offline; the stand-in talks to localstripe directly, which answers
CORS for any origin.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel

from api.assets import DEMO_DIR
from api.deps import RateLimited, SettingsDep, StripeDep
from ingest.core.errors import NotConfigured
from ingest.core.settings import Settings
from ingest.payments.demo_card import CardConfirmIn, CardConfirmOut, confirm_card_payment

CHECKOUT_PATH = "/demo/checkout"
STRIPE_JS_PATH = "/js.stripe.com/v3/"
REAL_STRIPE_API = "https://api.stripe.com"
# localstripe accepts any pk_ key on its public endpoints.
LOCALSTRIPE_PUBLISHABLE_KEY = "pk_test_sandbox_localstripe"

router = APIRouter(tags=["demo"])


class DemoConfig(BaseModel):
    """Where the demo page loads Stripe.js from, the key it uses, and what it sells."""

    stripe_js_url: str
    stripe_publishable_key: str
    product_name: str
    price_cents: int | None
    currency: str


def _page(name: str) -> FileResponse:
    return FileResponse(DEMO_DIR / name, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/demo", include_in_schema=False)
async def landing_page() -> FileResponse:
    """The demo landing page: open it with UTM parameters, then follow the link to the checkout."""
    return _page("landing.html")


@router.get(CHECKOUT_PATH, include_in_schema=False)
async def checkout_page() -> FileResponse:
    """The demo checkout: consent modal, Step-1 lead, Step-2 card payment, thank-you."""
    return _page("checkout.html")


def demo_config_for(settings: Settings) -> DemoConfig:
    """The demo page's config; the demo pays with localstripe only."""
    base = settings.stripe_api_base.rstrip("/")
    if base == REAL_STRIPE_API:
        raise NotConfigured("the demo checkout pays with localstripe: set STRIPE_API_BASE to its URL")
    return DemoConfig(
        stripe_js_url=base + STRIPE_JS_PATH,
        stripe_publishable_key=LOCALSTRIPE_PUBLISHABLE_KEY,
        product_name=settings.product_name,
        price_cents=settings.product_price_cents,
        currency=settings.product_currency,
    )


@router.get("/demo/config", responses={503: {"description": "STRIPE_API_BASE is Stripe's, not localstripe"}})
async def demo_config(settings: SettingsDep) -> DemoConfig:
    """Where the demo page loads localstripe's Stripe.js stand-in from, and the product it sells."""
    return demo_config_for(settings)


@router.post(
    "/demo/stripe/confirm-card",
    response_model=CardConfirmOut,
    dependencies=[RateLimited],
    responses={
        402: {"description": "the card was declined"},
        404: {"description": "no PaymentIntent with this client secret"},
        502: {"description": "Stripe (localstripe) could not be reached"},
    },
)
def confirm_card(body: CardConfirmIn, client: StripeDep) -> CardConfirmOut:
    """Attach a card tokenised by localstripe's Stripe.js stand-in to a PaymentIntent and confirm it."""
    return confirm_card_payment(client, body)
