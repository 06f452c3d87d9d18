"""Importing a CRM or GA4 export: DuckDB reads it, the store (either engine) takes it; a bad column, line or file is
named and nothing is loaded."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from cli.main import app
from ingest.core.settings import Settings
from ingest.reconcile.imports import CrmColumns, ExportRejected, Ga4Columns, import_export
from ingest.reconcile.repository import RECORD_TABLES, pull_stamps, replace_records
from ingest.reconcile.schemas import System
from ingest.store.database import Database, open_database
from tests.conftest import ADMIN_TOKEN, make_settings, serve, store_query

CRM_OK = "contact_id,email,event_id\nct_1,a@example.com,11111111-1111-4111-8111-111111111111\nct_2,b@example.com,\n"


@pytest.fixture
def store(engine: dict[str, Any]) -> dict[str, Any]:
    """These tests run on both engines (but the CLI's, which writes the embedded file)."""
    return engine


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    opened = open_database(settings)
    yield opened
    opened.close()


def load(database: Database, system: System, path: Path, **columns: str | None) -> int:
    write = lambda records: database.writer.submit_sync(replace_records, records)  # noqa: E731
    crm = CrmColumns(**{k: v for k, v in columns.items() if v}) if system is System.CRM else None
    ga4 = Ga4Columns(**columns) if system is System.GA4 else None  # type: ignore[arg-type]
    return import_export(system, path, write, crm=crm, ga4=ga4).records


def rows(database: Database, table: str) -> list[tuple[object, ...]]:
    [schema] = [schema for name, schema in RECORD_TABLES.values() if name == table]
    columns = ", ".join(field.name for field in schema)
    return database.read(lambda c: c.execute(f"select {columns} from {table} order by line").fetchall())


def test_a_crm_export_is_loaded_and_a_reimport_replaces_it(tmp_path: Path, database: Database) -> None:
    path = tmp_path / "crm.csv"
    path.write_text(CRM_OK)
    assert load(database, System.CRM, path) == 2
    assert load(database, System.CRM, path) == 2, "the same file twice"
    assert rows(database, "ext_crm_contacts") == [
        (2, "ct_1", "a@example.com", "11111111-1111-4111-8111-111111111111"),
        (3, "ct_2", "b@example.com", None),
    ]
    path.write_text("id,mail,journey\nct_9,z@example.com,\n")
    assert load(database, System.CRM, path, contact_id="id", email="mail", event_id="journey") == 1
    assert rows(database, "ext_crm_contacts") == [(2, "ct_9", "z@example.com", None)]
    assert database.read(pull_stamps)[System.CRM].records == 1


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("contact_id,mail,event_id\nct_1,a@x,\n", "email", "no column 'email'"),
        (CRM_OK + "ct_3,c@example.com\n", "line 4", "Expected Number of Columns: 3 Found: 2"),
        (CRM_OK + 'ct_3,"c@example.com,e\n', "line 4", "unterminated quote"),
        (CRM_OK + ",nobody@example.com,\n", "line 4", "names neither"),
        ("", "file", "is empty"),
        ("contact_id,email,event_id\n", "file", "no rows"),
    ],
    ids=[
        "missing-column",
        "short-row",
        "unterminated-quote",
        "row-naming-nothing",
        "empty-file",
        "header-only",
    ],
)
def test_a_bad_crm_export_is_refused_naming_the_column_or_line_and_nothing_is_loaded(
    tmp_path: Path, database: Database, text: str, field: str, message: str
) -> None:
    good = tmp_path / "good.csv"
    good.write_text(CRM_OK)
    load(database, System.CRM, good)
    before = rows(database, "ext_crm_contacts"), database.read(pull_stamps)
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    with pytest.raises(ExportRejected) as refused:
        load(database, System.CRM, bad)
    assert refused.value.field == field and message in str(refused.value)
    assert (rows(database, "ext_crm_contacts"), database.read(pull_stamps)) == before, (
        "the previous import stays"
    )


def test_a_crm_export_that_is_not_utf8_names_its_line(tmp_path: Path, database: Database) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"contact_id,email,event_id\nct_1,jos\xe9@example.com,e\n")
    with pytest.raises(ExportRejected, match=r"line 2.*utf-8"):
        load(database, System.CRM, path)
    assert rows(database, "ext_crm_contacts") == []


def test_a_ga4_csv_export_keeps_only_purchases(tmp_path: Path, database: Database) -> None:
    path = tmp_path / "ga4.csv"
    path.write_text(
        "event_name,ecommerce.transaction_id,event_id\npurchase,pi_1,e1\npage_view,,\npurchase,pi_2,\n"
    )
    assert load(database, System.GA4, path) == 2
    assert rows(database, "ext_ga4_purchases") == [(2, "pi_1", "e1"), (4, "pi_2", None)]
    path.write_text("event_name,ecommerce.transaction_id\npurchase,pi_1\npurchase,\n")
    with pytest.raises(ExportRejected, match="line 3: the purchase has no transaction_id"):
        load(database, System.GA4, path)
    path.write_text("event_name,order\npurchase,pi_1\n")
    with pytest.raises(ExportRejected, match="transaction_id"):
        load(database, System.GA4, path)
    assert load(database, System.GA4, path, transaction_id="order") == 1


def test_a_ga4_parquet_export_as_from_bigquery(tmp_path: Path, database: Database) -> None:
    path = tmp_path / "ga4.parquet"
    duckdb.execute(
        f"""copy (
            select 'purchase' as event_name, {{'transaction_id': 'pi_9', 'purchase_revenue': 47.0}} as ecommerce,
                [{{'key': 'event_id', 'value': {{'string_value': 'e9'}}}}] as event_params
            union all select 'refund', {{'transaction_id': 'pi_9', 'purchase_revenue': 47.0}}, []
            union all select 'purchase', {{'transaction_id': 'pi_8', 'purchase_revenue': 47.0}}, []
        ) to '{path}' (format parquet)"""
    )
    assert load(database, System.GA4, path) == 2
    assert rows(database, "ext_ga4_purchases") == [(1, "pi_9", "e9"), (3, "pi_8", None)]


def test_imports_through_the_api_answer_4xx_and_load_nothing_on_error(
    tmp_path: Path, store: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, attribution_max_body_bytes=1024, **store)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    big = (CRM_OK + "".join(f"ct_{n},p{n}@example.com,\n" for n in range(100))).encode()
    with serve(settings) as url, httpx.Client(base_url=url) as client:

        def send(content: bytes, **extra: object) -> httpx.Response:
            body = {
                "system": "crm",
                "file_name": "crm.csv",
                "content_base64": base64.b64encode(content).decode(),
            }
            return client.post("/v1/admin/reconcile/import", json=body | extra, headers=admin)

        answer = send(big)
        assert answer.status_code == 200 and answer.json()["records"] == 102, (
            "an export larger than other bodies"
        )
        refused = send(b"contact_id,email\nct_1,a@x\n")
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "event_id"
        assert send(b"x", content_base64="%%%").status_code == 422
        assert send(CRM_OK.encode(), system="stripe").status_code == 422
        assert send(CRM_OK.encode(), surprise=1).status_code == 422
        assert client.post("/v1/admin/reconcile/import", json={}).status_code == 401
        assert client.post("/v1/leads", content=b"{" + b" " * 2000 + b"}").status_code == 413, (
            "others keep theirs"
        )
        report = client.get("/v1/reconcile", headers=admin).json()
    assert [(item["system"], item["source"]) for item in report["systems"]] == [("crm", "import")]


def test_the_cli_imports_straight_to_the_file_and_says_which_line(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    env = {"ATTRIBUTION_DB_PATH": str(settings.attribution_db_path), "ATTRIBUTION_LOG_LEVEL": "ERROR"}
    good, bad = tmp_path / "crm.csv", tmp_path / "bad.csv"
    good.write_text(CRM_OK)
    bad.write_text(CRM_OK + "ct_3\n")
    runner = CliRunner()
    done = runner.invoke(app, ["reconcile", "import", "crm", str(good)], env=env)
    assert done.exit_code == 0, done.output
    refused = runner.invoke(app, ["reconcile", "import", "crm", str(bad)], env=env)
    assert refused.exit_code == 1 and "line 4" in refused.output
    missing = runner.invoke(app, ["reconcile", "import", "ga4", str(tmp_path / "nope.csv")], env=env)
    assert missing.exit_code == 2 and "no file" in missing.output
    database = Database.open(settings.attribution_db_path)
    try:
        assert database.read(pull_stamps)[System.CRM].records == 2
    finally:
        database.close()


def test_an_import_while_postgresql_refuses_is_503_and_leaves_the_previous_one(
    tmp_path: Path, postgres_url: str
) -> None:
    from ingest.store import postgres

    postgres.migrate(postgres_url)
    settings = make_settings(tmp_path, attribution_database_url=postgres_url)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = {
        "system": "crm",
        "file_name": "crm.csv",
        "content_base64": base64.b64encode(CRM_OK.encode()).decode(),
    }
    name = postgres_url.rsplit("/", 1)[1]
    with serve(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/admin/reconcile/import", json=body, headers=admin).status_code == 200
        other = body | {
            "content_base64": base64.b64encode(b"contact_id,email,event_id\nct_9,z@x,\n").decode()
        }
        with psycopg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as server:
            server.execute(f"alter database {name} with allow_connections false")
            server.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", [name]
            )
            try:
                refused = client.post("/v1/admin/reconcile/import", json=other, headers=admin)
            finally:
                server.execute(f"alter database {name} with allow_connections true")
        assert refused.status_code == 503 and refused.headers.get("retry-after"), refused.text
        kept = store_query(settings, "select contact_id from ext_crm_contacts order by line")
        assert kept == [("ct_1",), ("ct_2",)], "the previous import stays whole"
        again = client.post("/v1/admin/reconcile/import", json=other, headers=admin)
        assert again.status_code == 200 and again.json()["records"] == 1, "the store came back"
