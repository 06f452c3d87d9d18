from __future__ import annotations

import pytest

from ingest.core.settings import SettingsError, load_settings


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    settings = load_settings()
    assert str(settings.attribution_db_path) == "data/attribution.duckdb"
    assert settings.attribution_max_body_bytes == 65536
    assert settings.attribution_rate_limit_per_minute == 120
    assert settings.consent_version == "1.0"
    assert settings.require_consent is True
    assert (settings.dlq_max_retries, settings.dlq_backoff_multiplier, settings.dlq_backoff_base_seconds) == (
        5,
        2,
        1,
    )
    assert settings.destinations_enabled() == {
        "mailerlite": False,
        "crm": False,
        "sgtm": False,
        "meta": False,
    }
    assert settings.attribution_delivery_lease_seconds == 30


def test_a_lease_not_longer_than_a_send_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTRIBUTION_DELIVERY_LEASE_SECONDS", "10")
    monkeypatch.setenv("ATTRIBUTION_DELIVERY_TIMEOUT_SECONDS", "10")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "ATTRIBUTION_DELIVERY_LEASE_SECONDS" in str(caught.value)


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTRIBUTION_MAX_BODY_BYTES", "lots")
    monkeypatch.setenv("DLQ_MAX_RETRIES", "-1")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "ATTRIBUTION_MAX_BODY_BYTES" in str(caught.value)
    assert "DLQ_MAX_RETRIES" in str(caught.value)


def test_comma_lists_and_blank_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTRIBUTION_ALLOWED_ORIGINS", "https://shop.example, https://www.shop.example ,")
    monkeypatch.setenv("ATTRIBUTION_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "  ")
    settings = load_settings()
    assert settings.attribution_allowed_origins == ("https://shop.example", "https://www.shop.example")
    assert len(settings.trusted_proxy_networks) == 2
    assert settings.stripe_webhook_secret is None


def test_bad_proxy_network_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTRIBUTION_TRUSTED_PROXIES", "not-an-ip")
    with pytest.raises(SettingsError, match="ATTRIBUTION_TRUSTED_PROXIES"):
        load_settings()


def test_dotenv_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("CONSENT_VERSION=2.1\nREQUIRE_CONSENT=false\n")
    settings = load_settings()
    assert settings.consent_version == "2.1"
    assert settings.require_consent is False


@pytest.mark.parametrize(
    "base",
    [
        "https://connect.mailerlite.com",
        "https://connect.mailerlite.com/",
        "https://connect.mailerlite.com/api",
        "https://connect.mailerlite.com/api/",
    ],
)
def test_the_mailerlite_base_url_is_taken_with_or_without_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path, base: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAILERLITE_BASE_URL", base)
    assert load_settings().mailerlite_base_url == "https://connect.mailerlite.com"


def test_an_alert_webhook_that_is_not_an_http_url_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTRIBUTION_ALERT_WEBHOOK_URL", "hooks.slack.example/services/T0/B0/x")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "ATTRIBUTION_ALERT_WEBHOOK_URL" in str(caught.value)
    assert "hooks.slack" not in str(caught.value)  # a credential: never echoed
