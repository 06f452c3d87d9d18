"""The one client of the running API's admin endpoints, shared by the CLI and the dashboard.

On the embedded store the API process is the database's one writer, so every write from outside (replay, a Stripe
sync) goes through these endpoints; the dashboard reaches the API over HTTP only. Errors carry a sentence saying
what to do, for the CLI to print and the dashboard to show.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from ingest.core.settings import Settings
from ingest.outbox.replay import DeliveryDetail, ReplayIn, ReplayOut
from ingest.payments.sync import SyncReport
from ingest.reconcile.schemas import ImportOut, PullIn, PullOut, ReconcileOut, RepairIn, RepairOut, System

HEALTH_TIMEOUT_SECONDS = 2.0
REPLAY_TIMEOUT_SECONDS = 120.0
SYNC_TIMEOUT_SECONDS = 600.0
BACKUP_TIMEOUT_SECONDS = 3600.0
READ_TIMEOUT_SECONDS = 10.0
RECONCILE_TIMEOUT_SECONDS = 120.0
PULL_TIMEOUT_SECONDS = 1800.0  # 100,000 MailerLite subscribers at its 120 requests/minute take about a minute


class ApiError(Exception):
    """The API could not do what the dashboard asked; the message says what to do."""


class ApiUnreachable(ApiError):
    """Nothing answers at ATTRIBUTION_API_URL."""


class AdminTokenMissing(ApiError):
    """ATTRIBUTION_ADMIN_TOKEN is not set in this process's environment."""


class ApiRefused(ApiError):
    """The API answered with an error status (bad token, bad filter, ...)."""


@dataclass(frozen=True)
class ApiStatus:
    """Whether the API answers, and what to start when it does not."""

    url: str
    reachable: bool
    admin_token_set: bool
    detail: str


class AdminApi:
    """Talks to /healthz and /v1/admin/* of the API at `base_url` with a Bearer token."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    @classmethod
    def from_settings(cls, settings: Settings) -> AdminApi:
        """The client of ATTRIBUTION_API_URL with ATTRIBUTION_ADMIN_TOKEN."""
        return cls(settings.attribution_api_url, settings.admin_token_to_send())

    def status(self) -> ApiStatus:
        """Probe /healthz: reachable or not, and a sentence about it."""
        try:
            with self._client(HEALTH_TIMEOUT_SECONDS) as client:
                response = client.get("/healthz")
        except httpx.HTTPError as exc:
            return ApiStatus(
                self.base_url, False, self.token is not None, unreachable_hint(self.base_url, exc)
            )
        if response.status_code != 200:
            detail = f"the API at {self.base_url} answered /healthz with {response.status_code}"
            return ApiStatus(self.base_url, False, self.token is not None, detail)
        return ApiStatus(self.base_url, True, self.token is not None, f"API up at {self.base_url}")

    def replay(self, request: ReplayIn) -> ReplayOut:
        """POST /v1/admin/deliveries/replay (a dry run only counts)."""
        body = request.model_dump(mode="json", exclude_none=True)
        response = self._admin("POST", "/v1/admin/deliveries/replay", REPLAY_TIMEOUT_SECONDS, json=body)
        return ReplayOut.model_validate(response.json())

    def sync_stripe(self, since: datetime | None) -> SyncReport:
        """POST /v1/admin/sync/stripe: backfill the Stripe events webhooks missed."""
        body = {"since": since.isoformat() if since else None}
        response = self._admin("POST", "/v1/admin/sync/stripe", SYNC_TIMEOUT_SECONDS, json=body)
        return SyncReport.model_validate(response.json())

    def backup(self, directory: str) -> dict[str, Any]:
        """POST /v1/admin/backup: the API copies its live database into `directory` (on its host)."""
        response = self._admin(
            "POST", "/v1/admin/backup", BACKUP_TIMEOUT_SECONDS, json={"directory": directory}
        )
        body: dict[str, Any] = response.json()
        return body

    def delivery(self, delivery_id: UUID) -> DeliveryDetail:
        """GET /v1/admin/deliveries/{id}: the live state of one delivery with its attempts."""
        response = self._admin("GET", f"/v1/admin/deliveries/{delivery_id}", READ_TIMEOUT_SECONDS)
        return DeliveryDetail.model_validate(response.json())

    def reconcile(self) -> ReconcileOut:
        """GET /v1/reconcile: each system's records against ours, computed now."""
        response = self._admin("GET", "/v1/reconcile", RECONCILE_TIMEOUT_SECONDS)
        return ReconcileOut.model_validate(response.json())

    def pull(self, request: PullIn) -> PullOut:
        """POST /v1/admin/reconcile/pull: the API reads Stripe and MailerLite into its ext_* tables."""
        body = request.model_dump(mode="json", exclude_none=True)
        response = self._admin("POST", "/v1/admin/reconcile/pull", PULL_TIMEOUT_SECONDS, json=body)
        return PullOut.model_validate(response.json())

    def import_export(self, system: System, path: Path, columns: dict[str, str]) -> ImportOut:
        """POST /v1/admin/reconcile/import: the file's bytes, checked and loaded by the API."""
        body = {
            "system": system.value,
            "file_name": path.name,
            "content_base64": base64.b64encode(path.read_bytes()).decode("ascii"),
            **columns,
        }
        response = self._admin("POST", "/v1/admin/reconcile/import", RECONCILE_TIMEOUT_SECONDS, json=body)
        return ImportOut.model_validate(response.json())

    def repair(self, request: RepairIn) -> RepairOut:
        """POST /v1/admin/reconcile/repair: re-send what a system misses or holds stale (dry: list it)."""
        body = request.model_dump(mode="json", exclude_none=True)
        response = self._admin("POST", "/v1/admin/reconcile/repair", RECONCILE_TIMEOUT_SECONDS, json=body)
        return RepairOut.model_validate(response.json())

    def _admin(self, method: str, path: str, timeout: float, **kwargs: Any) -> httpx.Response:
        if self.token is None:
            raise AdminTokenMissing(
                f"ATTRIBUTION_ADMIN_TOKEN is not set, so the admin endpoint {path} of the API at {self.base_url} "
                "can't be used: set it to the API's admin token (a running dashboard needs a restart to see it)."
            )
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            with self._client(timeout) as client:
                response = client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiUnreachable(unreachable_hint(self.base_url, exc)) from None
        if response.status_code in (401, 403):
            raise ApiRefused(
                f"the API refused the admin token ({response.status_code}): ATTRIBUTION_ADMIN_TOKEN must match "
                "the API's"
            )
        if response.status_code >= 400:
            raise ApiRefused(f"the API answered {response.status_code}: {_error_text(response)}")
        return response

    def _client(self, timeout: float) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)


def unreachable_hint(base_url: str, error: BaseException) -> str:
    """What to start when the API does not answer."""
    return (
        f"the API does not answer at {base_url} ({type(error).__name__}). Start it with `attribution serve` "
        "(or `attribution demo`), or point ATTRIBUTION_API_URL at it."
    )


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return str(body)[:300]
