"""Pulling the systems' own records: MailerLite's cursor pages with its 429s, Stripe through the SDK, and a pull
that fails or is killed half way leaving the previous pull in force."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ingest.core.clock import utcnow
from ingest.core.settings import Settings
from ingest.reconcile.pull import SystemUnavailable, list_mailerlite_subscribers, pull_systems
from ingest.reconcile.repository import Records, pull_stamps, records_table, replace_records
from ingest.reconcile.schemas import PullIn, RecordSource, System
from ingest.store.database import Database, open_database
from sandbox import Sandbox
from sandbox.fakes import MAILERLITE_API_KEY
from tests.conftest import make_settings, wait_until


@pytest.fixture
def store(engine: dict[str, Any]) -> dict[str, Any]:
    """Pulls write the store on either engine (the killed CLI pull stays the embedded file's: the CLI writes it)."""
    return engine


@pytest.fixture
def mailerlite(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The session's fakes with MailerLite emptied (and emptied again after)."""
    sandbox.reset("mailerlite")
    yield sandbox
    sandbox.reset("mailerlite")


def add_subscribers(sandbox: Sandbox, count: int, *, start: int = 0) -> None:
    with httpx.Client(
        base_url=sandbox.mailerlite_url, headers={"Authorization": f"Bearer {MAILERLITE_API_KEY}"}
    ) as http:
        for number in range(start, start + count):
            body = {
                "email": f"Person.{number}@Example.com",
                "fields": {"event_id": f"e-{number}", "payment_status": "paid"},
            }
            assert http.post("/api/subscribers", json=body).status_code in (200, 201)


def ml_settings(tmp_path: Path, sandbox: Sandbox, **overrides: Any) -> Settings:
    return make_settings(
        tmp_path,
        mailerlite_api_key=MAILERLITE_API_KEY,
        mailerlite_base_url=sandbox.mailerlite_url,
        mailerlite_requests_per_minute=0,
        **overrides,
    )


def test_the_fake_lists_its_subscribers_in_cursor_pages_as_the_real_api(mailerlite: Sandbox) -> None:
    add_subscribers(mailerlite, 7)
    headers = {"Authorization": f"Bearer {MAILERLITE_API_KEY}"}
    url = mailerlite.mailerlite_url + "/api/subscribers"
    assert httpx.get(url, params={"limit": 0}, headers=headers).json() == {"total": 7}
    first = httpx.get(url, params={"limit": 5}, headers=headers).json()
    assert len(first["data"]) == 5 and first["meta"]["next_cursor"] and first["links"]["next"]
    second = httpx.get(
        url, params={"limit": 5, "cursor": first["meta"]["next_cursor"]}, headers=headers
    ).json()
    assert len(second["data"]) == 2 and second["meta"]["next_cursor"] is None
    emails = [sub["email"] for sub in first["data"] + second["data"]]
    assert sorted(emails) == sorted(f"person.{n}@example.com" for n in range(7))
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, params={"limit": 1001}, headers=headers).status_code == 422
    assert httpx.get(url, params={"cursor": "not-a-cursor"}, headers=headers).status_code == 422


def test_a_pull_across_many_pages_waits_out_a_429_in_the_middle(tmp_path: Path, mailerlite: Sandbox) -> None:
    add_subscribers(mailerlite, 1050)
    settings = ml_settings(tmp_path, mailerlite)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    def halfway(system: System, done: int, total: int | None) -> None:
        assert total == 1050
        if done == 500:  # the next request is answered 429 twice, Retry-After 1
            mailerlite.set_faults("mailerlite", status_429_retry_after=1, count_429=2)

    mailerlite.clear("mailerlite")
    with httpx.Client() as http:
        listing = list_mailerlite_subscribers(settings, http, None, halfway, page_size=100, sleep=sleep)
    assert listing.count == 1050 and listing.pages == 11 and listing.rate_limited == 2
    assert len(set(listing.columns["email"])) == 1050, "no subscriber listed twice, none skipped"
    assert all(email == email.lower() for email in listing.columns["email"]), "filed as MailerLite files them"
    assert [round(wait) for wait in slept if wait > 0.5] == [1, 1], "each 429's Retry-After waited out"
    statuses = [r.status for r in mailerlite.requests("mailerlite") if r.method == "GET"]
    assert statuses.count(429) == 2 and statuses.count(200) == 12


def test_a_pull_replaces_the_previous_one_and_a_failed_pull_leaves_it_in_force(
    tmp_path: Path, mailerlite: Sandbox, store: dict[str, Any]
) -> None:
    add_subscribers(mailerlite, 30)
    settings = ml_settings(tmp_path, mailerlite, **store)
    database = open_database(settings)
    write = lambda records: database.writer.submit_sync(replace_records, records)  # noqa: E731
    try:
        first = pull_systems(settings, PullIn(systems=[System.MAILERLITE]), write, stripe_client=None)
        again = pull_systems(settings, PullIn(systems=[System.MAILERLITE]), write, stripe_client=None)
        assert first.pulled[0].records == again.pulled[0].records == 30
        count = database.read(
            lambda c: c.execute("select count(*) from ext_mailerlite_subscribers").fetchall()
        )
        assert count == [(30,)], "a second pull replaces the first: nothing doubled"

        add_subscribers(mailerlite, 30, start=30)

        def outage(system: System, done: int, total: int | None) -> None:
            if done >= 20:
                mailerlite.set_faults("mailerlite", fail_5xx_until=4e9)

        try:
            with pytest.raises(SystemUnavailable, match="503"):
                pull_systems(
                    settings,
                    PullIn(systems=[System.MAILERLITE]),
                    write,
                    stripe_client=None,
                    http=_paged(10),
                    progress=outage,
                    sleep=lambda seconds: None,
                )
        finally:
            mailerlite.set_faults("mailerlite", clear=True)
        stamps = database.read(pull_stamps)
        assert stamps[System.MAILERLITE].pulled_at == again.pulled[0].pulled_at.replace(tzinfo=None)
        count = database.read(
            lambda c: c.execute("select count(*) from ext_mailerlite_subscribers").fetchall()
        )
        assert count == [(30,)], "the failed pull wrote nothing: the previous one is in force"
    finally:
        database.close()


def _paged(page_size: int) -> httpx.Client:
    """A client that asks for small pages (as if MailerLite's page were smaller), to fail in the middle."""

    def smaller(request: httpx.Request) -> None:
        if request.url.params.get("limit") not in (None, "0"):
            request.url = request.url.copy_set_param("limit", str(page_size))

    return httpx.Client(event_hooks={"request": [smaller]})


def test_a_pull_killed_half_way_leaves_the_previous_pull_in_force(
    tmp_path: Path, mailerlite: Sandbox
) -> None:
    add_subscribers(mailerlite, 40)
    settings = ml_settings(tmp_path, mailerlite)
    database = Database.open(settings.attribution_db_path)
    try:
        pull_systems(
            settings,
            PullIn(systems=[System.MAILERLITE]),
            lambda records: database.writer.submit_sync(replace_records, records),
            stripe_client=None,
        )
        before = database.read(pull_stamps)[System.MAILERLITE]
    finally:
        database.close()
    add_subscribers(mailerlite, 1500, start=40)  # two pages of 1,000
    mailerlite.clear("mailerlite")
    mailerlite.set_faults("mailerlite", latency_ms=1500)  # every page takes 1.5 s to come
    env = {
        **os.environ,
        "ATTRIBUTION_DB_PATH": str(settings.attribution_db_path),
        "ATTRIBUTION_REPLICA_PATH": str(settings.attribution_replica_path),
        "MAILERLITE_API_KEY": MAILERLITE_API_KEY,
        "MAILERLITE_BASE_URL": mailerlite.mailerlite_url,
        "MAILERLITE_REQUESTS_PER_MINUTE": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "reconcile", "pull", "mailerlite"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # The count and the first page answered; the second page is on its way.
        wait_until(lambda: len(mailerlite.requests("mailerlite")) >= 2, timeout=30, what="the first page")
        wait_until(
            lambda: mailerlite.arrived("mailerlite") >= 3, timeout=30, what="the second page asked for"
        )
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        mailerlite.set_faults("mailerlite", clear=True)
        if process.poll() is None:
            process.kill()
    database = Database.open(settings.attribution_db_path)
    try:
        after = database.read(pull_stamps)[System.MAILERLITE]
        count = database.read(
            lambda c: c.execute("select count(*) from ext_mailerlite_subscribers").fetchall()
        )
    finally:
        database.close()
    assert after == before and count == [(40,)], "the killed pull left no trace: the previous one is in force"


def test_pull_refuses_a_system_not_configured_or_without_an_api(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **store)
    database = open_database(settings)
    write = lambda records: database.writer.submit_sync(replace_records, records)  # noqa: E731
    try:
        from ingest.core.errors import InvalidField, NotConfigured

        with pytest.raises(NotConfigured, match="MAILERLITE_API_KEY"):
            pull_systems(settings, PullIn(systems=[System.MAILERLITE]), write, stripe_client=None)
        with pytest.raises(InvalidField, match="import"):  # the request's mistake: a 422 naming `systems`
            pull_systems(settings, PullIn(systems=[System.CRM]), write, stripe_client=None)
        with pytest.raises(NotConfigured, match="neither"):
            pull_systems(settings, PullIn(), write, stripe_client=None)
        assert database.read(pull_stamps) == {}
    finally:
        database.close()


def test_two_instances_replacing_one_system_at_once_leave_one_pull(
    tmp_path: Path, mailerlite: Sandbox, store: dict[str, Any]
) -> None:
    add_subscribers(mailerlite, 25)
    settings = ml_settings(tmp_path, mailerlite, **store)
    with httpx.Client() as http:
        listing = list_mailerlite_subscribers(settings, http, None)
    first = open_database(settings)
    # PostgreSQL: two instances, each with its writer; the embedded file has one writer, which both share.
    second = open_database(settings) if store else first
    barrier = threading.Barrier(2) if store else None

    def racing(conn: Any, batch: Sequence[Records]) -> list[int]:
        if barrier is not None:  # both transactions have begun before either replaces anything
            conn.execute("select 1")
            barrier.wait(timeout=10)
        return replace_records(conn, batch)

    stamps = [utcnow(), utcnow() + timedelta(seconds=1)]
    pulls = [
        Records(System.MAILERLITE, RecordSource.API, at, records_table(System.MAILERLITE, listing.columns))
        for at in stamps
    ]
    try:
        with ThreadPoolExecutor(2) as pool:
            inserted = list(
                pool.map(
                    lambda pair: pair[0].writer.submit_sync(racing, pair[1]), zip((first, second), pulls)
                )
            )
        assert inserted == [25, 25]
        rows = second.read(
            lambda c: c.execute(
                "select count(*), count(distinct email), count(distinct pulled_at) from ext_mailerlite_subscribers"
            ).fetchall()
        )
        assert rows == [(25, 25, 1)], "one pull in force, none added to another"
        stamp = first.read(pull_stamps)[System.MAILERLITE]
        kept = second.read(
            lambda c: c.execute("select max(pulled_at) from ext_mailerlite_subscribers").fetchall()
        )
        assert stamp.records == 25 and kept == [(stamp.pulled_at,)], "the stamp says which pull is in force"
    finally:
        if second is not first:
            second.close()
        first.close()
