"""One settings object for the whole toolkit, read from the environment and `.env`."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[tuple[str, ...], NoDecode]


def _secret_list(value: SecretStr | None) -> tuple[str, ...]:
    """The entries of a secret that may be a comma list while it is rolled."""
    if value is None:
        return ()
    return tuple(part.strip() for part in value.get_secret_value().split(",") if part.strip())


class SettingsError(Exception):
    """A configuration value is missing or invalid; the message names the variable."""


class Settings(BaseSettings):
    """Every variable in CONTRACT.md, typed; field names are the environment names, lower-cased."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    attribution_database_url: SecretStr | None = None  # postgresql://...: PostgreSQL is the operational store
    attribution_db_path: Path = Path("data/attribution.duckdb")
    attribution_replica_path: Path = Path("data/attribution.replica.duckdb")
    attribution_replica_seconds: float = Field(5.0, gt=0)
    attribution_admin_token: SecretStr | None = None
    attribution_api_url: str = "http://127.0.0.1:8000"
    attribution_allowed_origins: CommaList = ()
    attribution_trusted_proxies: CommaList = ()
    attribution_max_body_bytes: int = Field(65536, ge=1024)
    attribution_max_import_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # an export sent to the admin import
    attribution_rate_limit_per_minute: int = Field(120, ge=0)
    attribution_inline_delivery_ms: int = Field(1500, ge=0)
    attribution_default_phone_region: str = Field("PT", pattern=r"^[A-Z]{2}$")
    attribution_demo: bool = False
    attribution_log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$")
    # Alerts: a Slack-compatible incoming webhook (its URL is a credential, hence secret).
    attribution_alert_webhook_url: SecretStr | None = None
    attribution_alert_dead_window_seconds: float = Field(300.0, gt=0, le=86400)
    attribution_alert_timeout_seconds: float = Field(10.0, gt=0, le=120)
    attribution_alert_max_backoff_seconds: float = Field(300.0, gt=0, le=86400)

    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str = "https://api.stripe.com"

    product_id: str = Field("cafe-com-vendas-ticket", min_length=1, max_length=100)
    product_name: str = Field("Café com Vendas - Lisbon 2025", min_length=1, max_length=200)
    product_price_cents: int | None = Field(None, gt=0)
    product_currency: str = Field("eur", pattern=r"^[a-z]{3}$")

    mailerlite_api_key: SecretStr | None = None
    mailerlite_base_url: str = "https://connect.mailerlite.com"
    mailerlite_group_id: str | None = None

    crm_webhook_url: str | None = None
    crm_api_token: SecretStr | None = None
    crm_signing_secret: SecretStr | None = None
    crm_enable_lead_capture: bool = True

    sgtm_endpoint: str | None = None
    sgtm_measurement_id: str | None = None
    sgtm_api_secret: SecretStr | None = None

    # Meta Conversions API: off without a pixel id and an access token.
    meta_pixel_id: str | None = Field(None, pattern=r"^\d{1,20}$")
    meta_access_token: SecretStr | None = None
    meta_api_version: str = Field("v21.0", pattern=r"^v\d{1,3}\.\d{1,3}$")
    meta_base_url: str = "https://graph.facebook.com"
    meta_test_event_code: str | None = Field(None, max_length=100)

    consent_version: str = Field("1.0", min_length=1, max_length=32)
    require_consent: bool = True

    dlq_max_retries: int = Field(5, ge=0, le=50)
    dlq_backoff_multiplier: float = Field(2.0, ge=1)
    dlq_backoff_base_seconds: float = Field(1.0, gt=0)

    # Delivery worker (runs inside `attribution serve`).
    attribution_delivery_worker: bool = True
    attribution_delivery_poll_seconds: float = Field(0.5, gt=0, le=60)
    attribution_delivery_timeout_seconds: float = Field(10.0, gt=0, le=120)
    attribution_delivery_lease_seconds: float = Field(30.0, gt=0)
    attribution_circuit_breaker_threshold: int = Field(5, ge=1, le=1000)
    attribution_circuit_breaker_cooldown_seconds: float = Field(30.0, gt=0, le=3600)
    mailerlite_concurrency: int = Field(4, ge=1, le=256)
    mailerlite_requests_per_minute: int = Field(120, ge=0)  # 0: no limit
    crm_concurrency: int = Field(16, ge=1, le=256)
    crm_requests_per_minute: int = Field(0, ge=0)
    sgtm_concurrency: int = Field(16, ge=1, le=256)
    sgtm_requests_per_minute: int = Field(0, ge=0)
    meta_concurrency: int = Field(8, ge=1, le=256)
    meta_requests_per_minute: int = Field(0, ge=0)

    @field_validator("attribution_alert_webhook_url")
    @classmethod
    def _http_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL (a Slack-compatible incoming webhook)")
        return value

    @field_validator("attribution_database_url")
    @classmethod
    def _postgresql_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (unset: the embedded DuckDB file)")
        return value

    @field_validator("attribution_allowed_origins", "attribution_trusted_proxies", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("attribution_trusted_proxies")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    @field_validator(
        "attribution_admin_token",
        "attribution_alert_webhook_url",
        "stripe_secret_key",
        "stripe_webhook_secret",
        "mailerlite_api_key",
        "crm_api_token",
        "crm_signing_secret",
        "sgtm_api_secret",
        "meta_access_token",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "mailerlite_group_id",
        "crm_webhook_url",
        "sgtm_endpoint",
        "sgtm_measurement_id",
        "meta_pixel_id",
        "meta_test_event_code",
        mode="before",
    )
    @classmethod
    def _blank_text_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("mailerlite_base_url")
    @classmethod
    def _mailerlite_base_without_api(cls, value: str) -> str:
        # MailerLite's docs give the base as https://connect.mailerlite.com/api; paths are added with /api/...
        base = value.strip().rstrip("/")
        return base.removesuffix("/api").rstrip("/") if base.endswith("/api") else base

    @field_validator("meta_base_url")
    @classmethod
    def _meta_base_without_slash(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @cached_property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """The trusted proxies as networks, so single addresses and CIDR ranges both work."""
        return tuple(ipaddress.ip_network(item, strict=False) for item in self.attribution_trusted_proxies)

    def admin_tokens(self) -> tuple[str, ...]:
        """Every accepted admin token: ATTRIBUTION_ADMIN_TOKEN may be a comma list while a token is rolled."""
        return _secret_list(self.attribution_admin_token)

    def stripe_webhook_secrets(self) -> tuple[str, ...]:
        """Every accepted webhook signing secret: STRIPE_WEBHOOK_SECRET may be a comma list during a roll (Stripe
        signs with the new secret while the old one still verifies)."""
        return _secret_list(self.stripe_webhook_secret)

    def admin_token_to_send(self) -> str | None:
        """The token our own clients (CLI, dashboard) send: the first of the list, so list the new one first."""
        tokens = self.admin_tokens()
        return tokens[0] if tokens else None

    @model_validator(mode="after")
    def _lease_outlives_a_send(self) -> Settings:
        if self.attribution_delivery_lease_seconds <= self.attribution_delivery_timeout_seconds:
            raise ValueError(
                "ATTRIBUTION_DELIVERY_LEASE_SECONDS must be longer than ATTRIBUTION_DELIVERY_TIMEOUT_SECONDS, "
                "or a delivery still being sent could be claimed again"
            )
        return self

    def destinations_enabled(self) -> dict[str, bool]:
        """Which forwarding destinations are configured; an unconfigured one is off."""
        return {
            "mailerlite": self.mailerlite_api_key is not None,
            "crm": self.crm_webhook_url is not None,
            "sgtm": self.sgtm_endpoint is not None,
            "meta": self.meta_pixel_id is not None and self.meta_access_token is not None,
        }


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning a validation failure into one message that names each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "settings"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None
