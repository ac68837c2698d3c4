"""summary.json (schema 1) field for field: the keys of every record, held against the summary of the commit before
the pipeline/ folders moved (5144bd4). A new or lost key is a contract change (DESIGN §6): update
tests/fixtures/summary_fields.json together with the README and say so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).parent / "fixtures" / "summary_fields.json"
#: artifact keys that only some artifacts carry (an error, a guard verdict, a mixed-precision plan)
OPTIONAL = {"error", "int8_guard", "accuracy", "repeat"}


def fields(summary: dict[str, Any]) -> dict[str, list[str]]:
    arts = [a for a in summary.get("artifacts") or [] if not a.get("error")]

    def union(recs: list[dict[str, Any]], drop: set[str] = frozenset()) -> list[str]:
        return sorted({k for r in recs for k in r} - drop)

    gens = [a["generation"] for a in arts if isinstance(a.get("generation"), dict)]
    return {
        **({"generation": union(gens)} if gens else {}),   # a language model's artifacts (issue 24)
        "summary": sorted(summary),
        "baseline": sorted(summary["baseline"]),
        "metric": sorted(summary["baseline"].get("metric") or {}),
        "stages": union(summary["stages"], {"warnings", "original_seconds"}),
        "artifact": union(arts, OPTIONAL),
        "latency_ms": union([a["latency_ms"] for a in arts]),
        "environment": union([a["environment"] for a in arts]),
        "gate": sorted(summary["gate"]),
        "gate.artifacts": union(summary["gate"]["artifacts"]),
        "headline": sorted(summary.get("headline") or {}),
    }


def assert_summary_fields(summary: dict[str, Any], kind: str) -> None:
    want = json.loads(GOLDEN.read_text())[kind]
    got = fields(summary)
    diff = {part: {"lost": sorted(set(want[part]) - set(got.get(part, []))),
                   "new": sorted(set(got.get(part, [])) - set(want[part]))}
            for part in {*want, *got} if set(want.get(part, [])) != set(got.get(part, []))}
    assert diff == {}, f"summary.json fields changed ({kind}): {diff}"
