"""The results store's schema: its tables, the migrations that build them in order, and what its columns can hold.

pipeline/results/store.py opens, migrates and writes; this module is the shape it writes into.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

STATUSES = ("incomplete", "complete", "failed", "interrupted")

metadata = MetaData()
schema_version = Table("schema_version", metadata,
                       Column("version", Integer, primary_key=True),
                       Column("description", String(200), nullable=False),
                       Column("applied", String(40), nullable=False))
runs = Table("runs", metadata,
             Column("id", Integer, primary_key=True, autoincrement=True),
             Column("run_id", String(200), nullable=False),
             Column("recipe", String(200), nullable=False),
             Column("device", String(200), nullable=False),
             Column("run_dir", Text),
             Column("status", String(20), nullable=False),
             Column("started", String(40)),
             Column("finished", String(40)),
             Column("edgepipe_version", String(40)),
             Column("baseline_accuracy", Float),
             Column("baseline_params", Integer),
             Column("baseline_macs", Integer),
             Column("gate_passed", Boolean),
             Column("recipe_json", Text),
             Column("summary_json", Text),
             UniqueConstraint("run_id", "device", name="uq_runs_run_device"))
stages = Table("stages", metadata,
               Column("id", Integer, primary_key=True, autoincrement=True),
               Column("run_pk", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
               Column("seq", Integer, nullable=False),
               Column("name", String(100), nullable=False),
               Column("accuracy", Float), Column("params", Integer), Column("macs", Integer),
               Column("seconds", Float))
artifacts = Table("artifacts", metadata,
                  Column("id", Integer, primary_key=True, autoincrement=True),
                  Column("run_pk", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
                  Column("name", String(100), nullable=False),
                  Column("backend", String(50)), Column("precision", String(20)),
                  Column("file", Text), Column("sha256", String(64)), Column("bytes", Integer),
                  Column("accuracy", Float), Column("valid", Boolean), Column("error", Text),
                  Column("gate_passed", Boolean), Column("parent", Text))
benchmarks = Table("benchmarks", metadata,
                   Column("id", Integer, primary_key=True, autoincrement=True),
                   Column("artifact_id", Integer, ForeignKey("artifacts.id", ondelete="CASCADE"), nullable=False),
                   Column("run_pk", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
                   Column("runtime", String(100)),
                   Column("p50", Float), Column("p90", Float), Column("p99", Float),
                   Column("mean", Float), Column("std", Float), Column("n", Integer),
                   Column("valid", Boolean), Column("invalid_reasons", Text), Column("record_json", Text))
# a language model's greedy generation on the device (issue 24): one row per cache-graph artifact that generated
generations = Table("generations", metadata,
                    Column("id", Integer, primary_key=True, autoincrement=True),
                    Column("artifact_id", Integer, ForeignKey("artifacts.id", ondelete="CASCADE"), nullable=False),
                    Column("run_pk", Integer, ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
                    Column("prompt_len", Integer), Column("new_tokens", Integer),
                    Column("ttft_p50_ms", Float), Column("ttft_p90_ms", Float),
                    Column("decode_tokens_per_s_p50", Float), Column("decode_tokens_per_s_p90", Float),
                    Column("n", Integer), Column("peak_rss_mb", Float), Column("valid", Boolean),
                    Column("why", Text), Column("greedy_matches_torch", Boolean), Column("greedy_agreement", Float))

V1_TABLES = (runs, stages, artifacts, benchmarks)


def _m1_initial(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(V1_TABLES))


def _m2_history_index(conn: Connection) -> None:
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_runs_recipe_device_started ON runs (recipe, device, started)"))


def _m3_generations(conn: Connection) -> None:
    metadata.create_all(conn, tables=[generations])


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "runs, stages, artifacts, benchmarks", _m1_initial),
    (2, "index for history queries by recipe and device", _m2_history_index),
    (3, "generations: a language model's time to first token, decode tokens/s and peak memory", _m3_generations),
]


INT64 = (1 << 63) - 1
_INT, _FLOAT = "a whole number", "a finite number"
_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {   # the numeric columns and where a summary keeps them
    "baseline": (("accuracy", _FLOAT), ("params", _INT), ("macs", _INT)),
    "stages": (("accuracy", _FLOAT), ("params", _INT), ("macs", _INT), ("seconds", _FLOAT)),
    "artifacts": (("bytes", _INT), ("accuracy", _FLOAT)),
    "latency_ms": (("p50", _FLOAT), ("p90", _FLOAT), ("p99", _FLOAT), ("mean", _FLOAT), ("std", _FLOAT),
                   ("n", _INT)),
}


def _bad_number(value: Any, kind: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    if kind == _INT:
        return not isinstance(value, int) or abs(value) > INT64
    return not math.isfinite(value) or abs(value) > 1e300


def row_problems(summary: dict[str, Any]) -> list[str]:
    """What the store's columns cannot hold, one line each naming the key: SQLite stores a string in an INTEGER
    column without a word, and an int past 64 bits crashes the driver (``history --add`` of an edited summary)."""
    problems: list[str] = []
    for key in ("run_id", "recipe", "device"):
        value = summary.get(key)
        if not isinstance(value, str) or not value or len(value) > 200:
            problems.append(f"{key}: {str(value)[:40]!r} is not a name of 1 to 200 characters")

    def check(rec: Any, where: str, group: str) -> None:
        if rec is None:
            return
        if not isinstance(rec, dict):
            problems.append(f"{where}: expected a mapping, got {type(rec).__name__}")
            return
        for field, kind in _FIELDS[group]:
            if _bad_number(rec.get(field), kind):
                problems.append(f"{where}.{field}: {str(rec.get(field))[:40]!r} is not {kind} the store can hold")

    check(summary.get("baseline"), "baseline", "baseline")
    for name in ("stages", "artifacts"):
        items = summary.get(name)
        if items is not None and not isinstance(items, list):
            problems.append(f"{name}: expected a list, got {type(items).__name__}")
            continue
        for i, rec in enumerate(items or []):
            check(rec, f"{name}[{i}]", name)
            if name == "artifacts" and isinstance(rec, dict):
                check(rec.get("latency_ms"), f"artifacts[{i}].latency_ms", "latency_ms")
    return problems
