"""The SQL models: loading order, their checks on the sql/ folder, metrics on an empty and a bulk database."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from ingest.reconcile.models import (
    LAYERS,
    METRIC_NAMES,
    SQL_DIR,
    ModelError,
    ModelParams,
    discover_models,
    load_models,
    run_data_tests,
    success_metrics,
)
from ingest.reconcile.replica import live_models, reading
from ingest.store.database import Database, connect, migrate
from sandbox.bulk import BulkSpec, generate_bulk
from sandbox.scenario import GroundTruth
from tests.conftest import make_settings

ALL_ON = ModelParams(
    require_consent=True,
    crm_enable_lead_capture=True,
    mailerlite_enabled=True,
    crm_enabled=True,
    sgtm_enabled=True,
)


def test_models_load_after_every_model_they_read() -> None:
    models = discover_models()
    position = {model.name: index for index, model in enumerate(models)}
    assert {model.layer for model in models} == set(LAYERS)
    for model in models:
        for dependency in model.depends_on:
            assert position[dependency] < position[model.name], f"{model.name} loads before {dependency}"
    metrics = [model.name for model in models if model.layer == "metrics"]
    assert metrics.index("success_metrics") > max(metrics.index(name) for name in METRIC_NAMES), (
        "reads all five"
    )
    assert [model.layer for model in models] == sorted((model.layer for model in models), key=LAYERS.index), (
        "staging, then marts, then metrics"
    )


def test_every_model_states_its_grain_and_staging_only_reads_tables() -> None:
    for model in discover_models():
        assert model.sql.startswith("-- Grain: "), f"{model.path} must open with its grain"
        if model.layer == "staging":
            assert not model.depends_on, f"{model.name} reads other models"


def _write(folder: Path, layer: str, name: str, sql: str) -> None:
    (folder / layer).mkdir(parents=True, exist_ok=True)
    (folder / layer / f"{name}.sql").write_text(f"-- Grain: test\n{sql}\n")


def test_a_model_reading_a_later_layer_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "staging", "stg_a", "select * from mart_b")
    _write(tmp_path, "marts", "mart_b", "select 1 as x")
    with pytest.raises(ModelError, match="later layer"):
        discover_models(tmp_path)


def test_models_reading_each_other_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "marts", "mart_a", "select * from mart_b")
    _write(tmp_path, "marts", "mart_b", "select * from mart_a")
    with pytest.raises(ModelError, match="cycle"):
        discover_models(tmp_path)


def test_a_bad_model_file_name_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "marts", "Bad-Name", "select 1")
    with pytest.raises(ModelError, match="identifier"):
        discover_models(tmp_path)


def test_inside_a_layer_a_model_waits_for_the_one_it_reads(tmp_path: Path) -> None:
    _write(tmp_path, "marts", "a_uses_b", "select * from b_base")
    _write(tmp_path, "marts", "b_base", "select 1 as x")
    _write(tmp_path, "marts", "c_alone", "select 2 as y -- mentions a_uses_b only in a comment")
    assert [model.name for model in discover_models(tmp_path)] == ["b_base", "a_uses_b", "c_alone"]


def test_a_model_named_only_in_a_string_is_no_dependency(tmp_path: Path) -> None:
    _write(tmp_path, "metrics", "a_items", "select 'b_headline' as metric -- the lead's b_headline")
    _write(tmp_path, "metrics", "b_headline", "select count(*) as n from a_items where metric = 'b_headline'")
    models = {model.name: model for model in discover_models(tmp_path)}
    assert models["a_items"].depends_on == frozenset()
    assert models["b_headline"].depends_on == {"a_items"}


def test_metrics_on_an_empty_database_are_defined_and_met(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    conn = connect(settings.attribution_db_path)
    migrate(conn)
    conn.close()
    with reading(settings, "database") as reader:
        metrics = success_metrics(reader.conn)
        assert run_data_tests(reader.conn) == {}
    assert [metric.metric for metric in metrics] == list(METRIC_NAMES)
    for metric in metrics:
        assert (metric.numerator, metric.denominator) == (0, 0)
        assert metric.met, metric
    values = {metric.metric: metric.value for metric in metrics}
    assert values == {name: (0.0 if name == "system_resilience" else 1.0) for name in METRIC_NAMES}


def test_live_metrics_use_temp_views_that_leave_the_database_untouched(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    database = Database.open(settings.attribution_db_path)
    try:
        first = live_models(database, settings, success_metrics)
        again = live_models(database, settings, success_metrics)
        views = database.read(
            lambda conn: conn.execute("select count(*) from duckdb_views() where not internal").fetchone()
        )
    finally:
        database.close()
    assert first == again
    assert views == (0,), "no view may be created in the database file"


@pytest.fixture(scope="module")
def bulk_database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """A small bulk database (two chunks) and the ground truth the generator kept."""
    path = tmp_path_factory.mktemp("bulk") / "bulk.duckdb"
    truth = generate_bulk(path, BulkSpec(leads=6000, chunk_leads=3000, seed=7, days=20))
    return path, truth


def test_bulk_database_metrics_equal_the_generators_ground_truth(
    bulk_database: tuple[Path, GroundTruth],
) -> None:
    path, truth = bulk_database
    conn = duckdb.connect(str(path), read_only=True)
    try:
        load_models(conn, truth.params, temporary=True)
        got = {metric.metric: (metric.numerator, metric.denominator) for metric in success_metrics(conn)}
        failures = run_data_tests(conn)
    finally:
        conn.close()
    assert got == truth.expected()
    assert failures == {}
    assert truth.rows["leads"] == 6000 and truth.rows["deliveries"] > 3 * 6000
    # The generator injects misses: a metric stuck at 100% here would prove nothing.
    assert all(numerator < denominator for numerator, denominator in got.values() if denominator), got
    assert GroundTruth.load(path) == truth


def test_daily_metrics_add_up_to_the_headline_ones_on_the_bulk_ground_truth(
    bulk_database: tuple[Path, GroundTruth],
) -> None:
    path, truth = bulk_database
    conn = duckdb.connect(str(path), read_only=True)
    try:
        load_models(conn, truth.params, temporary=True)
        daily = conn.execute(
            "select metric, day, numerator, denominator from success_metrics_daily"
        ).fetchall()
        headline = {metric.metric: (metric.numerator, metric.denominator) for metric in success_metrics(conn)}
    finally:
        conn.close()
    summed = dict.fromkeys(METRIC_NAMES, (0, 0))
    days: dict[str, set[object]] = {name: set() for name in METRIC_NAMES}
    for metric, day, numerator, denominator in daily:
        assert day is not None, f"a thing {metric} counts has no day, so no daily chart shows it"
        summed[metric] = (summed[metric][0] + numerator, summed[metric][1] + denominator)
        days[metric].add(day)
    assert summed == truth.expected() == headline
    assert all(len(days[name]) > 1 for name in METRIC_NAMES), "spread over the days, not one lump"


def test_bulk_generation_is_deterministic(tmp_path: Path) -> None:
    spec = BulkSpec(leads=1500, chunk_leads=1000, seed=7, days=20)
    first = generate_bulk(tmp_path / "first.duckdb", spec)
    assert generate_bulk(tmp_path / "again.duckdb", spec) == first
    other = generate_bulk(tmp_path / "other.duckdb", BulkSpec(leads=1500, chunk_leads=1000, seed=8, days=20))
    assert other.metrics != first.metrics


def test_a_data_test_reports_the_rows_that_break_it(
    bulk_database: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    path, truth = bulk_database
    copy = tmp_path / "broken.duckdb"
    copy.write_bytes(path.read_bytes())
    conn = duckdb.connect(str(copy))
    try:
        # A lead captured twice under one event_id, and a delivery marked delivered with no time.
        conn.execute("create table doubled as select * from leads limit 1")
        conn.execute("alter table leads rename to leads_stored")
        conn.execute("create view leads as select * from leads_stored union all select * from doubled")
        conn.execute(
            "update deliveries set delivered_at = null where delivery_id = "
            "(select min(delivery_id) from deliveries where status = 'delivered')"
        )
        load_models(conn, truth.params, temporary=True)
        failures = run_data_tests(conn)
    finally:
        conn.close()
    assert set(failures) >= {"unique_staging_keys", "delivered_have_a_time"}
    assert any(row[0] == "stg_leads" for row in failures["unique_staging_keys"])


def test_sql_folder_is_where_the_loader_looks() -> None:
    assert (SQL_DIR / "metrics" / "success_metrics.sql").is_file()
