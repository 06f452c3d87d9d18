"""The bulk run: a new database, written chunk by chunk, and its ground truth saved beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ingest.reconcile.models import ModelParams
from ingest.store.database import connect, migrate
from sandbox.bulk.chunk import Chunk
from sandbox.bulk.columns import Tally
from sandbox.bulk.spec import BulkSpec
from sandbox.scenario import GroundTruth


def _chunks(spec: BulkSpec) -> Iterator[tuple[int, int]]:
    number, left = 0, spec.leads
    while left > 0:
        size = min(spec.chunk_leads, left)
        yield number, size
        number, left = number + 1, left - size


def generate_bulk(path: Path, spec: BulkSpec, *, require_consent: bool = True) -> GroundTruth:
    """Write a new database of `spec.leads` synthetic leads and all they cause; save and return its ground truth.

    Every destination but Meta is configured (the bulk mode generates no Meta deliveries; the HTTP scenario does)
    and CRM lead capture is on; `require_consent` is the consent gate it ran under.
    """
    params = ModelParams(
        require_consent=require_consent,
        crm_enable_lead_capture=True,
        mailerlite_enabled=True,
        crm_enabled=True,
        sgtm_enabled=True,
        meta_enabled=False,
    )
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    tally = Tally()
    conn = connect(path)
    try:
        migrate(conn)
        for number, size in _chunks(spec):
            conn.begin()
            Chunk(spec, number, size, params).build(conn, tally)
            conn.commit()
        conn.execute("checkpoint")
    finally:
        conn.close()
    ground = GroundTruth(
        kind="bulk",
        seed=spec.seed,
        params=params,
        metrics={name: (counts[0], counts[1]) for name, counts in tally.counts.items()},
        rows=tally.rows,
    )
    ground.save(path)
    return ground
