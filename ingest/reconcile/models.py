"""The SQL models of ingest/sql/ loaded as views in dependency order, and the five success metrics read from them.

Models are plain DuckDB SQL files, one per view, named for the file: `sql/staging/stg_*.sql` (renames and types),
`sql/marts/*.sql`, `sql/metrics/*.sql`. They are loaded folder by folder (staging, then marts, then metrics) and,
inside a folder, after the models they name (a model depends on every other model whose name it mentions outside
comments and string literals).
The one input that is not a database table is `run_settings`: a one-row table of the configuration the metrics
are read under, created here from `ModelParams` before the views.

Where the views live: a read-only connection cannot create objects in its file, so callers choose. A reader of a
replica (`ingest.reconcile.replica.open_reader`) attaches the file read-only into an in-memory database and creates the views
there, in `memory.main`, so every cursor of that connection shares them. The API, reading its own live database,
creates them as TEMP views on a fresh cursor for each request (`temporary=True`); they vanish with the cursor.

Materialised models: a replica is a snapshot that never changes, so its publisher computes the models that cost a
pass over every lead, payment or delivery (MATERIALISED) once, as tables of the copy (`materialise_models`). A
reader of that copy creates views only for the other models, which bind to those tables by name: the metrics,
the coverage matrix and the funnel are then short queries instead of a fresh pass over the whole database.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Self

import duckdb
from pydantic import BaseModel, ConfigDict

from ingest.core.settings import Settings

SQL_DIR = Path(
    str(resources.files("ingest") / "sql")
)  # shipped inside the package, so a wheel has its models
LAYERS = ("staging", "marts", "metrics")
TESTS_FOLDER = "tests"
METRIC_NAMES = (
    "attribution_accuracy",
    "data_consistency",
    "consent_compliance",
    "system_resilience",
    "crm_coverage",
)
PARAM_COLUMNS = (
    "require_consent",
    "crm_enable_lead_capture",
    "mailerlite_enabled",
    "crm_enabled",
    "sgtm_enabled",
    "meta_enabled",
)
# Computed into tables of each replica copy (see the module docstring); every other model stays a view.
MATERIALISED = frozenset(
    {
        "payment_outcomes",
        "lead_consent",
        "lead_journeys",
        "journey_presence",
        "journey_gaps",
        "delivery_consent",
        "funnel_daily",
        "success_metrics_daily",
        "system_presence",
        "system_missing",
        "system_unexpected",
        "system_stale",
        "verified_journey_presence",
    }
)
_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# A comment or a string literal names no model (left to right, so an apostrophe in a comment opens no string).
_COMMENT_OR_STRING = re.compile(r"--[^\n]*|'(?:[^']|'')*'")


class ModelError(Exception):
    """The sql/ folder is malformed: a bad file name, a cycle, or a model naming one of a later layer."""


@dataclass(frozen=True)
class Model:
    """One SQL file: the view it defines, its layer and the models it reads."""

    name: str
    layer: str
    path: Path
    sql: str
    depends_on: frozenset[str]


@dataclass(frozen=True)
class ModelParams:
    """The configuration the metrics depend on: the consent gate, CRM lead capture and which destinations are on."""

    require_consent: bool
    crm_enable_lead_capture: bool
    mailerlite_enabled: bool
    crm_enabled: bool
    sgtm_enabled: bool
    meta_enabled: bool = False  # last and defaulted: ground-truth files written before Meta still load

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The parameters a process with these settings runs under."""
        enabled = settings.destinations_enabled()
        return cls(
            require_consent=settings.require_consent,
            crm_enable_lead_capture=settings.crm_enable_lead_capture,
            mailerlite_enabled=enabled["mailerlite"],
            crm_enabled=enabled["crm"],
            sgtm_enabled=enabled["sgtm"],
            meta_enabled=enabled["meta"],
        )

    def values(self) -> list[bool]:
        """The values in the column order of PARAM_COLUMNS."""
        return [getattr(self, name) for name in PARAM_COLUMNS]


class Metric(BaseModel):
    """One success metric against its target: value = numerator / denominator (a fraction, 0..1)."""

    model_config = ConfigDict(frozen=True)

    metric: str
    value: float
    target: float
    comparator: str
    met: bool
    numerator: int
    denominator: int


def _read_sql(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip().rstrip(";").strip()


def discover_models(sql_dir: Path = SQL_DIR) -> list[Model]:
    """Every model under sql_dir, in the order its views must be created."""
    files: list[tuple[str, Path]] = []
    for layer in LAYERS:
        files.extend((layer, path) for path in sorted((sql_dir / layer).glob("*.sql")))
    names = [path.stem for _, path in files]
    for name in names:
        if not _MODEL_NAME.match(name):
            raise ModelError(f"model file name {name!r} is not a lower-case SQL identifier")
    if len(set(names)) != len(names):
        raise ModelError("two model files share a name")
    layer_of = {path.stem: layer for layer, path in files}
    models: list[Model] = []
    for layer, path in files:
        sql = _read_sql(path)
        code = _COMMENT_OR_STRING.sub("", sql)
        depends = frozenset(
            other for other in names if other != path.stem and re.search(rf"\b{other}\b", code)
        )
        for other in depends:
            if LAYERS.index(layer_of[other]) > LAYERS.index(layer):
                raise ModelError(f"{path.stem} ({layer}) reads {other}, a model of a later layer")
        models.append(Model(path.stem, layer, path, sql, depends))
    return _in_dependency_order(models)


def _in_dependency_order(models: list[Model]) -> list[Model]:
    """Layer by layer; inside a layer, file-name order except where a model must wait for one it reads."""
    ordered: list[Model] = []
    done: set[str] = set()
    for layer in LAYERS:
        waiting = [model for model in models if model.layer == layer]
        while waiting:
            ready = [model for model in waiting if model.depends_on <= done]
            if not ready:
                cycle = ", ".join(model.name for model in waiting)
                raise ModelError(f"models that read each other in a cycle: {cycle}")
            first = ready[0]
            ordered.append(first)
            done.add(first.name)
            waiting.remove(first)
    return ordered


def create_run_settings(conn: duckdb.DuckDBPyConnection, params: ModelParams, *, temporary: bool) -> None:
    """Create (or replace) the one-row `run_settings` table the models read their configuration from."""
    kind = "temp table" if temporary else "table"
    columns = ", ".join(f"? as {name}" for name in PARAM_COLUMNS)  # names from the PARAM_COLUMNS constant
    conn.execute(f"create or replace {kind} run_settings as select {columns}", params.values())


def load_models(
    conn: duckdb.DuckDBPyConnection,
    params: ModelParams,
    *,
    temporary: bool,
    models: Sequence[Model] | None = None,
) -> list[str]:
    """Create `run_settings` and every model's view on `conn`, in dependency order; return the view names."""
    create_run_settings(conn, params, temporary=temporary)
    kind = "temp view" if temporary else "view"
    loaded = []
    for model in discover_models() if models is None else models:
        # The name is a checked identifier from the file name, the body a file of this repository.
        conn.execute(f"create or replace {kind} {model.name} as\n{model.sql}")
        loaded.append(model.name)
    return loaded


def materialise_models(conn: duckdb.DuckDBPyConnection, params: ModelParams) -> list[str]:
    """On a writable connection to a replica copy: every MATERIALISED model as a table of the file (the others as
    temp views, gone with the connection); return the names of the tables created."""
    create_run_settings(conn, params, temporary=True)
    created = []
    for model in discover_models():
        if model.name in MATERIALISED:
            # The models after it read the table by name, so the pass over the data is made once.
            conn.execute(f"create table {model.name} as\n{model.sql}")
            created.append(model.name)
        else:
            conn.execute(f"create temp view {model.name} as\n{model.sql}")
    return created


def success_metrics(conn: duckdb.DuckDBPyConnection) -> list[Metric]:
    """The five success metrics from a connection the models are loaded on, in DESIGN.md order.

    Each metric's view is queried on its own: DuckDB plans five small queries faster than their union.
    """
    metrics = []
    for name in METRIC_NAMES:
        cursor = conn.execute(
            f"select metric, value, target, comparator, met, numerator, denominator from {name}"  # noqa: S608
        )
        columns = [column[0] for column in cursor.description]
        row = cursor.fetchone()
        if row is None:
            raise ModelError(f"the {name} view returned no row")
        metrics.append(Metric(**dict(zip(columns, row, strict=True))))
    return metrics


@dataclass(frozen=True)
class DataTest:
    """One data test of sql/tests: a query that returns the rows breaking an expectation (none: it passes)."""

    name: str
    sql: str


def discover_data_tests(sql_dir: Path = SQL_DIR) -> list[DataTest]:
    """Every data test under sql/tests, by file name."""
    return [DataTest(path.stem, _read_sql(path)) for path in sorted((sql_dir / TESTS_FOLDER).glob("*.sql"))]


def run_data_tests(conn: duckdb.DuckDBPyConnection, limit: int = 20) -> dict[str, list[tuple[object, ...]]]:
    """Run every data test on a connection with the models loaded; return up to `limit` offending rows each."""
    failures: dict[str, list[tuple[object, ...]]] = {}
    for test in discover_data_tests():
        rows = conn.execute(f"select * from ({test.sql}) limit ?", [limit]).fetchall()  # noqa: S608 - sql/tests
        if rows:
            failures[test.name] = rows
    return failures
