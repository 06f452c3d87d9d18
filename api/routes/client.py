"""GET /v1/client/config: what the browser client (attribution.js) needs before asking for consent."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import RateLimited, SettingsDep

router = APIRouter(tags=["client"])


class ClientConfig(BaseModel):
    """The consent notice in force; a decision stored for another version must be asked again."""

    consent_version: str
    require_consent: bool


@router.get("/v1/client/config", dependencies=[RateLimited])
async def client_config(settings: SettingsDep) -> ClientConfig:
    """The consent notice version in force and whether consent gates forwarding."""
    return ClientConfig(consent_version=settings.consent_version, require_consent=settings.require_consent)
