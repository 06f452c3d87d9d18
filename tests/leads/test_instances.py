"""Lead capture and consent with several instances on one PostgreSQL database: two PostgresDatabase objects (each
its own writer) and two served apps, racing on the same event_id at the same moment."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.core.clock import utcnow
from ingest.core.errors import Conflict
from ingest.core.settings import Settings
from ingest.leads.consent import RequestContext
from ingest.leads.schemas import LeadIn
from ingest.leads.service import LeadCaptured, LeadPlan, capture_leads, plan_lead
from ingest.outbox import repository as outbox_repository
from ingest.store import postgres
from ingest.store.postgres import PostgresDatabase
from tests.conftest import consent_body, lead_body, make_settings
from tests.leads.test_leads_api import DESTINATIONS_ON

ON_POSTGRES = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
# The delivery worker is the outbox's (its leases are tested there); here the rows it would claim are what matter.
NO_WORKER = {"attribution_delivery_worker": False}


@pytest.fixture
def instances(postgres_url: str) -> Iterator[tuple[PostgresDatabase, PostgresDatabase]]:
    """Two instances' stores on one migrated database, each with its own writer and read pool."""
    postgres.migrate(postgres_url)
    first = PostgresDatabase.connect(postgres_url)
    second = PostgresDatabase.connect(postgres_url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@pytest.fixture
def plain_settings(tmp_path: Path) -> Settings:
    """Settings for planning leads (no destination configured); the instances name their database themselves."""
    return make_settings(tmp_path)


def _plan(settings: Settings, event_id: uuid.UUID, email: str = "ana.teste@example.com") -> LeadPlan:
    context = RequestContext(received_at=utcnow(), ip="127.0.0.1", user_agent="instances-test")
    return plan_lead(settings, LeadIn(**lead_body(event_id=str(event_id), email=email)), context)


def _capture(database: PostgresDatabase, plan: LeadPlan) -> LeadCaptured | Exception:
    try:
        return database.writer.submit_sync(capture_leads, plan)
    except Exception as exc:  # the answer under test: a Conflict, or any failure the assertions name
        return exc


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released together, so they reach their instances at the same moment."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> Any:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def _count(database: PostgresDatabase, table: str) -> int:
    row = database.read(lambda conn: conn.execute(f"select count(*) from {table}").fetchone())
    return int(row[0])


def _stored_email(database: PostgresDatabase, event_id: uuid.UUID) -> str:
    def read(conn: Any) -> str:
        row = conn.execute("select email from leads where event_id = ?", [event_id]).fetchone()
        return str(row[0])

    return database.read(read)


def test_one_lead_reaching_two_instances_at_once_is_new_once(
    instances: tuple[PostgresDatabase, PostgresDatabase], plain_settings: Settings
) -> None:
    first, second = instances
    rounds = 30
    for _ in range(rounds):  # each round a lone job on each writer: lookup, then insert, on both at once
        event_id = uuid.uuid4()
        plans = (_plan(plain_settings, event_id), _plan(plain_settings, event_id))
        answers = at_once(lambda: _capture(first, plans[0]), lambda: _capture(second, plans[1]))
        assert all(isinstance(answer, LeadCaptured) for answer in answers), answers
        assert sorted(answer.duplicate for answer in answers) == [False, True]
        sessions = {answer.plan.lead["user_session_id"] for answer in answers}
        assert len(sessions) == 1  # the duplicate answers with the stored lead's session
    assert _count(first, "leads") == rounds
    assert _count(first, "consent_ledger") == rounds  # a duplicate appends nothing
    assert _count(first, "deliveries") == rounds * 4


def test_batches_of_the_same_leads_on_two_instances_store_each_once(
    instances: tuple[PostgresDatabase, PostgresDatabase], plain_settings: Settings
) -> None:
    first, second = instances
    event_ids = [uuid.uuid4() for _ in range(120)]

    def submit_all(database: PostgresDatabase) -> list[LeadCaptured | Exception]:
        # Queued at once, so the writer commits them in shared batches whose optimistic insert meets the other's.
        futures = [database.writer.submit_nowait(capture_leads, _plan(plain_settings, e)) for e in event_ids]
        answers: list[LeadCaptured | Exception] = []
        for future in futures:
            try:
                answers.append(future.result())
            except Exception as exc:  # named by the assertion below
                answers.append(exc)
        return answers

    ours, theirs = at_once(lambda: submit_all(first), lambda: submit_all(second))

    failures = [answer for answer in ours + theirs if not isinstance(answer, LeadCaptured)]
    assert failures == []
    for mine, other in zip(ours, theirs, strict=True):
        assert sorted([mine.duplicate, other.duplicate]) == [False, True]
    assert _count(second, "leads") == len(event_ids)
    assert _count(second, "consent_ledger") == len(event_ids)
    assert _count(second, "deliveries") == len(event_ids) * 4


def test_another_email_under_the_event_id_on_another_instance_is_a_conflict(
    instances: tuple[PostgresDatabase, PostgresDatabase], plain_settings: Settings
) -> None:
    first, second = instances
    for _ in range(20):
        event_id = uuid.uuid4()
        ana = _plan(plain_settings, event_id, "ana.teste@example.com")
        rui = _plan(plain_settings, event_id, "rui.teste@example.com")
        answers = at_once(lambda: _capture(first, ana), lambda: _capture(second, rui))
        stored = [answer for answer in answers if isinstance(answer, LeadCaptured)]
        refused = [answer for answer in answers if isinstance(answer, Conflict)]
        assert len(stored) == 1 and len(refused) == 1, answers
        assert stored[0].duplicate is False
        assert str(event_id) in str(refused[0])
        assert _stored_email(second, event_id) == stored[0].plan.lead["email"]
    assert _count(first, "leads") == 20
    assert _count(first, "consent_ledger") == 20  # the refused capture appended no consent decision


@ON_POSTGRES
def test_two_served_instances_split_a_lead_and_its_duplicate(
    api_with: Callable[..., httpx.Client], read_store: Callable[..., Any]
) -> None:
    one, two = api_with(**NO_WORKER), api_with(**NO_WORKER)
    event_ids = [str(uuid.uuid4()) for _ in range(25)]

    async def post_pairs() -> list[tuple[httpx.Response, httpx.Response]]:
        async with (
            httpx.AsyncClient(base_url=str(one.base_url), timeout=30) as first,
            httpx.AsyncClient(base_url=str(two.base_url), timeout=30) as second,
        ):

            async def pair(event_id: str) -> tuple[httpx.Response, httpx.Response]:
                body = lead_body(event_id=event_id)
                a, b = await asyncio.gather(
                    first.post("/v1/leads", json=body), second.post("/v1/leads", json=body)
                )
                return a, b

            return await asyncio.gather(*(pair(event_id) for event_id in event_ids))

    for a, b in asyncio.run(post_pairs()):
        assert (a.status_code, b.status_code) == (200, 200), (a.text, b.text)
        assert sorted([a.json()["duplicate"], b.json()["duplicate"]]) == [False, True]
        assert a.json()["user_session_id"] == b.json()["user_session_id"]
    assert read_store("select count(*) from leads") == [(len(event_ids),)]
    assert read_store("select count(*) from consent_ledger") == [(len(event_ids),)]
    assert read_store("select count(*) from deliveries") == [(len(event_ids) * 4,)]

    event_id = event_ids[0]
    other = two.post("/v1/leads", json=lead_body(event_id=event_id, email="someone.else@example.com"))
    assert other.status_code == 409
    assert event_id in other.json()["message"]
    malformed = one.post("/v1/leads", json=lead_body(event_id="not-a-uuid"))
    assert malformed.status_code == 422


@ON_POSTGRES
def test_a_withdrawal_on_one_instance_suppresses_what_another_would_send(
    api_with: Callable[..., httpx.Client], read_store: Callable[..., Any], settings: Settings
) -> None:
    capturing, withdrawing = (
        api_with(**DESTINATIONS_ON, **NO_WORKER),
        api_with(**DESTINATIONS_ON, **NO_WORKER),
    )
    lead = capturing.post("/v1/leads", json=lead_body()).json()
    assert lead["mailerlite"]["status"] == "queued"
    event_id = lead["event_id"]

    def due_for_the_capturing_instance() -> set[str]:
        # What a delivery worker of any instance would claim now from the shared outbox.
        database = PostgresDatabase.connect(settings.attribution_database_url.get_secret_value())  # type: ignore[union-attr]
        try:
            limits = {destination: 100 for destination in ("mailerlite", "crm", "sgtm", "meta")}
            rows = database.read(lambda conn: outbox_repository.due_candidates(conn, limits, utcnow(), []))
        finally:
            database.close()
        return {row["destination"] for row in rows if str(row["event_id"]) == event_id}

    assert due_for_the_capturing_instance() == {"mailerlite", "crm", "sgtm", "meta"}

    withdrawal = consent_body(
        user_session_id=lead["user_session_id"],
        event_id=event_id,
        marketing_consent=False,
        analytics_consent=True,
    )
    answer = withdrawing.post("/v1/consent", json=withdrawal)

    assert answer.status_code == 200, answer.text
    assert answer.json()["consent"]["suppressed_deliveries"] == 2  # MailerLite's upsert and Meta's Lead
    rows = dict(
        (destination, (status, reason))
        for destination, status, reason in read_store(
            "select destination, status, reason from deliveries where event_id = ?", [event_id]
        )
    )
    assert rows["mailerlite"] == ("suppressed", "consent withdrawn")
    assert rows["meta"] == ("suppressed", "consent withdrawn")
    assert rows["crm"][0] == rows["sgtm"][0] == "pending"  # contact record and analytics still allowed
    assert due_for_the_capturing_instance() == {"crm", "sgtm"}
    again = withdrawing.post(
        "/v1/consent", json=withdrawal
    )  # the same decision again suppresses nothing more
    assert again.json()["consent"]["suppressed_deliveries"] == 0
    bad = capturing.post("/v1/consent", json=withdrawal | {"consent_method": "shrug"})
    assert bad.status_code == 422
    assert read_store("select count(*) from consent_ledger where source = 'consent'") == [(2,)]
