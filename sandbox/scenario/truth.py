"""The ground truth a generator injected, and its file beside the database: `<database>.truth.json`.

Both generators write one (the HTTP scenario and the bulk mode); the SQL models must reproduce its numerators and
denominators.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ingest.reconcile.models import METRIC_NAMES, ModelParams

TRUTH_SUFFIX = ".truth.json"


def truth_path(database_path: Path) -> Path:
    """Where the ground truth of a generated database is kept: beside it, `<name>.truth.json`."""
    return database_path.with_name(database_path.name + TRUTH_SUFFIX)


@dataclass(frozen=True)
class GroundTruth:
    """What a generator injected: the expected numerator and denominator of every metric, and what it did."""

    kind: str  # "scenario" (through the API) | "bulk" (straight into the tables)
    seed: int
    params: ModelParams
    metrics: dict[str, tuple[int, int]]
    rows: dict[str, int] = field(default_factory=dict)
    injected: dict[str, Any] = field(default_factory=dict)
    # What `attribution reconcile` must find once each system's own records are read (the HTTP scenario only):
    # per system {"missing": [journey], "unexpected": [entry], "stale": [[journey, field]]}, and
    # "verified_data_consistency": {"value": [numerator, denominator]}.
    systems: dict[str, Any] = field(default_factory=dict)

    def save(self, database_path: Path) -> Path:
        """Write the ground truth beside the database; return its path."""
        path = truth_path(database_path)
        document = {
            "kind": self.kind,
            "seed": self.seed,
            "params": asdict(self.params),
            "metrics": {
                name: {"numerator": numerator, "denominator": denominator}
                for name, (numerator, denominator) in self.metrics.items()
            },
            "rows": self.rows,
            "injected": self.injected,
            "systems": self.systems,
        }
        path.write_text(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, database_path: Path) -> GroundTruth:
        """Read the ground truth saved beside a database."""
        document = json.loads(truth_path(database_path).read_text(encoding="utf-8"))
        return cls(
            kind=document["kind"],
            seed=document["seed"],
            params=ModelParams(**document["params"]),
            metrics={
                name: (int(value["numerator"]), int(value["denominator"]))
                for name, value in document["metrics"].items()
            },
            rows=document["rows"],
            injected=document["injected"],
            systems=document.get("systems", {}),
        )

    def expected(self) -> dict[str, tuple[int, int]]:
        """(numerator, denominator) of each metric, in DESIGN.md order."""
        return {name: self.metrics[name] for name in METRIC_NAMES}
