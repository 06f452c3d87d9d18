"""The shapes of reconciliation: which systems keep records, and what pull, import, reconcile and repair answer."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ingest.core.clock import InputTimestamp, UtcTimestamp
from ingest.core.vocabulary import Destination


class System(StrEnum):
    """A system whose own records we read: over its API (Stripe, MailerLite) or from an export (CRM, GA4)."""

    STRIPE = "stripe"
    MAILERLITE = "mailerlite"
    CRM = "crm"
    GA4 = "ga4"


class RecordSource(StrEnum):
    """How a system's records reached us."""

    API = "api"
    IMPORT = "import"


PULLED = (System.STRIPE, System.MAILERLITE)  # read over their APIs by `reconcile pull`
IMPORTED = (System.CRM, System.GA4)  # loaded from an export by `reconcile import`
# The outbox destination whose deliveries put a journey in each system (Stripe is written by checkout, not by us).
DESTINATION_OF = {
    System.MAILERLITE: Destination.MAILERLITE,
    System.CRM: Destination.CRM,
    System.GA4: Destination.SGTM,
}


class PullIn(BaseModel):
    """Which systems to read (default: both Stripe and MailerLite), and from when."""

    model_config = ConfigDict(extra="forbid")

    systems: list[System] | None = Field(default=None, min_length=1)
    since: InputTimestamp | None = Field(
        default=None, description="only records created (Stripe) or updated (MailerLite) at or after (UTC)"
    )


class PulledSystem(BaseModel):
    """What one pull replaced a system's records with."""

    system: System
    records: int
    pulled_at: UtcTimestamp
    since: UtcTimestamp | None
    pages: int
    rate_limited: int = Field(description="429 answers waited out")


class PullOut(BaseModel):
    """The systems pulled."""

    pulled: list[PulledSystem]


class ImportOut(BaseModel):
    """What an import replaced a system's records with."""

    system: System
    records: int
    pulled_at: UtcTimestamp
    file_name: str


class StaleField(BaseModel):
    """A record the system holds for a journey with a field that disagrees with ours."""

    event_id: str
    field: str
    ours: str | None
    theirs: str | None


class SystemRecords(BaseModel):
    """One system's records against ours (CONTRACT.md `attribution reconcile --json`)."""

    system: System
    source: RecordSource
    as_of: UtcTimestamp
    expected: int
    held: int
    missing: list[str]
    unexpected: list[str]
    stale: list[StaleField]


class VerifiedConsistency(BaseModel):
    """data_consistency with presence decided by the systems' own records where they were pulled or imported."""

    value: float
    target: float
    met: bool
    numerator: int
    denominator: int
    verified_systems: list[System]
    unverified_systems: list[str] = Field(
        description="systems without records (and Meta, whose records cannot be read): presence from our outbox"
    )


class ReconcileOut(BaseModel):
    """Our records against each system's own, and verified_data_consistency."""

    systems: list[SystemRecords]
    verified_data_consistency: VerifiedConsistency

    @property
    def clean(self) -> bool:
        """Whether no system misses or holds stale anything."""
        return not any(system.missing or system.stale for system in self.systems)


class RepairIn(BaseModel):
    """Which system to repair (default: every one with records), and whether only to list what would go."""

    model_config = ConfigDict(extra="forbid")

    system: System | None = None
    dry_run: bool = False


class RepairItem(BaseModel):
    """One journey a repair re-sends to a system (or would, or may not)."""

    system: System
    event_id: str
    why: str = Field(description="missing, or the stale field")
    delivery_id: str | None = Field(default=None, description="the fresh delivery queued (none in a dry run)")
    transaction_id: str | None = None


class NotRepaired(BaseModel):
    """A journey a system misses or holds stale that a repair does not re-send, and why."""

    system: System
    event_id: str
    reason: str


class RepairOut(BaseModel):
    """What a repair queued (or, in a dry run, would queue), and what it left alone with the reason."""

    dry_run: bool
    queued: list[RepairItem]
    not_repaired: list[NotRepaired]
