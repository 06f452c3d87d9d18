"""schemathesis over our own OpenAPI against the real app: no operation answers a server error or breaks its schema.

Every operation, admin ones included (with the token), with a bounded number of generated examples each; Stripe
is localstripe and every destination a sandbox fake, so a 5xx here is ours. On both store engines: PostgreSQL
refuses what DuckDB lets by (a type, a malformed value), and such a refusal must be a 4xx too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from ingest.store import postgres
from sandbox import LocalStripe, Sandbox
from sandbox.postgres import PostgresCluster
from tests.conftest import ADMIN_TOKEN, make_settings, serve

EXAMPLES_PER_OPERATION = 40
# Operations that compute the SQL models or read the systems on every call (about a second each; on PostgreSQL over
# a fresh copy of the store) and take little input: a few examples cover what they accept.
FEWER_EXAMPLES = {
    "GET /v1/metrics/success": 3,
    "GET /v1/reconcile": 3,
    "POST /v1/admin/reconcile/repair": 8,
    "POST /v1/admin/reconcile/pull": 12,
}
# Writes to the server's file system at a path the caller names: fuzzing would litter the machine with folders.
# tests/ops covers it with real requests.
NOT_FUZZED = frozenset({"POST /v1/admin/backup"})
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module", params=["duckdb", "postgresql"])
def api_schema(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Any]:
    tmp_path: Path = tmp_path_factory.mktemp("schemathesis")
    with LocalStripe() as localstripe, Sandbox() as fakes:
        values: dict[str, Any] = {
            name.lower(): value for name, value in (localstripe.env() | fakes.env()).items()
        }
        values |= {"product_price_cents": 4700, "attribution_demo": True}
        if request.param == "postgresql":  # the module's own database on the session's server, migrated
            values["attribution_database_url"] = _migrated_database(
                request.getfixturevalue("postgres_cluster")
            )
        with serve(make_settings(tmp_path, **values)) as base_url:
            yield schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def _migrated_database(cluster: PostgresCluster) -> str:
    name = f"schema_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f"create database {name}")
    url = cluster.url.rsplit("/", 1)[0] + f"/{name}"
    postgres.migrate(url)
    return url


def _operations() -> list[str]:
    # The app's own schema, built without starting it (nothing is opened before the lifespan runs).
    app = create_app(make_settings(Path("unused"), attribution_demo=True))
    operations = [
        f"{method.upper()} {path}" for path, item in app.openapi()["paths"].items() for method in item
    ]
    return [operation for operation in operations if operation not in NOT_FUZZED]


@pytest.mark.parametrize("operation", _operations())
def test_no_server_error_and_answers_match_the_schema(
    api_schema: Any, operation: str, request: pytest.FixtureRequest
) -> None:
    strategy = api_schema.find_operation_by_label(operation).as_strategy()
    # Half as many on PostgreSQL: what differs there is the store's refusals, not the inputs the schema allows.
    on_postgres = request.node.callspec.params.get("api_schema") == "postgresql"

    @given(case=strategy)
    @settings(
        max_examples=FEWER_EXAMPLES.get(operation, EXAMPLES_PER_OPERATION) // (2 if on_postgres else 1),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        derandomize=True,
    )
    def call(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, checks=CHECKS, timeout=30)

    call()
