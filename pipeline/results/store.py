"""Results store: every run, stage, artifact and benchmark, queryable across runs (``edgepipe history``).

SQLite by default, through SQLAlchemy 2 Core, so a team can point ``EDGEPIPE_DB`` at a shared PostgreSQL
(``postgresql://user@host/edgepipe``) without code changes. Where it lives:

* ``open_store(x)``: ``x`` may be a URL (anything with ``://``) or a file path (-> SQLite);
* else ``$EDGEPIPE_DB`` (URL or path);
* else ``$XDG_DATA_HOME/edgepipe/results.db`` (default ``~/.local/share/edgepipe/results.db``): a history of
  results is data, not cache, and it must outlive ``make clean`` of a project's ``runs/``.

The schema is versioned in the database (table ``schema_version``) and brought up to date by the ordered
``MIGRATIONS`` below when a store is opened; add a step, never edit an applied one. The Table objects describe the
latest schema, so each step must be idempotent (``IF NOT EXISTS``, or guarded with ``inspect``): step 1 run on a
new database creates today's tables, and a later step that adds a column must find it already there.

Writes are transactional: ``begin_run`` commits a row marked ``incomplete`` before any work starts, and
``finish_run`` replaces its stages, artifacts and benchmarks and sets the final status in one transaction, so a crash
anywhere leaves the previous consistent state: the run stays visible as ``incomplete``. A run that fails, or is
interrupted (Ctrl-C, SIGTERM), closes its rows as ``failed`` or ``interrupted``. Connections and statements time out
after ``EDGEPIPE_DB_TIMEOUT`` seconds (30), so a server that accepts and never answers cannot hang a run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError

from pipeline.results.rundir import artifact_name, load_summary, now_iso
from pipeline.results.store_schema import (
    MIGRATIONS,
    STATUSES,
    artifacts,
    benchmarks,
    generations,
    metadata,
    row_problems,
    runs,
    schema_version,
    stages,
)
from targets.errors import ConfigError
from targets.jsonio import strict_dumps
from targets.schema import env_seconds


def default_location() -> str:
    if os.environ.get("EDGEPIPE_DB"):
        return os.environ["EDGEPIPE_DB"]
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return str(base / "edgepipe" / "results.db")


def store_url(location: str | os.PathLike[str] | None = None) -> str:
    """A SQLAlchemy URL from a URL or a path (SQLite); the parent folder of a SQLite file is created."""
    loc = str(location) if location is not None else default_location()
    if "://" in loc:
        try:
            make_url(loc)
        except ArgumentError as exc:
            raise ConfigError(f"results store URL {loc!r} is not valid: {exc}",
                              hint="e.g. EDGEPIPE_DB=postgresql://user@host/edgepipe or a file path") from exc
        return loc
    path = Path(loc).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def store_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """A database error (a corrupt file, a value the schema cannot take) becomes one ConfigError naming the store,
    never a traceback; the caller's work (summary.json) is already on disk by then."""
    import functools

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (SQLAlchemyError, OSError) as exc:   # OSError: a socket timeout pg8000 does not wrap
            url = self.engine.url.render_as_string(hide_password=True)
            raise ConfigError(f"results store {url}: {method.__name__.replace('_', ' ')} failed: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                              hint="a corrupt store can be moved aside (EDGEPIPE_DB picks another); the run folder "
                                   "keeps summary.json and `edgepipe history --add DIR` imports it later") from None
    return wrapper


class Store:
    """A results database; cheap to open, safe to use from one process at a time per run."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.migrate()

    # ---------------------------------------------------------------------------------------------- schema
    def version(self) -> int:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("schema_version"):
                return 0
            return conn.execute(select(func.max(schema_version.c.version))).scalar() or 0

    def migrate(self) -> int:
        """Apply the missing steps in order, each in its own transaction together with its version row."""
        with self.engine.connect():   # a server that cannot be reached fails here once, not once per retry below
            pass
        self._racing(lambda conn: metadata.create_all(conn, tables=[schema_version]), lambda: False)
        current, known = self.version(), MIGRATIONS[-1][0]
        if current > known:
            raise ConfigError(f"results store {self.engine.url.render_as_string(hide_password=True)} has schema "
                              f"version {current}, newer than this edgepipe knows ({known})",
                              hint="upgrade edgepipe, or point EDGEPIPE_DB at another store")
        for number, description, step in MIGRATIONS:
            def apply(conn: Connection, number: int = number, description: str = description,
                      step: Callable[[Connection], None] = step) -> None:
                step(conn)
                conn.execute(insert(schema_version).values(version=number, description=description, applied=now_iso()))

            self._racing(apply, lambda number=number: self.version() >= number)
        return known

    def _racing(self, work: Callable[[Connection], None], done: Callable[[], bool], attempts: int = 10) -> None:
        """Run DDL that another process opening the same new store may be running at the same moment: the loser's
        transaction rolls back and, the steps being idempotent, it looks again once the winner has committed."""
        for attempt in range(attempts):
            if done():
                return
            try:
                with self.engine.begin() as conn:
                    work(conn)
                return
            except (IntegrityError, OperationalError, ProgrammingError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    # ---------------------------------------------------------------------------------------------- writes
    @store_errors
    def begin_run(self, run_id: str, recipe: str | dict[str, Any], device: str, run_dir: str | Path | None = None,
                  started: str | None = None) -> str:
        """Record a run as ``incomplete`` before any work starts (a re-run of the same id starts over)."""
        recipe_name = recipe if isinstance(recipe, str) else str(recipe.get("name", "?"))
        values = {"recipe": recipe_name, "device": device, "run_dir": str(run_dir) if run_dir else None,
                  "status": "incomplete", "started": started or now_iso(), "finished": None, "gate_passed": None,
                  "recipe_json": None if isinstance(recipe, str) else strict_dumps(recipe, "store: the recipe",
                                                                                    default=str),
                  "summary_json": None}
        with self.engine.begin() as conn:
            self._upsert_run(conn, run_id, device, values)
        return run_id

    @store_errors
    def finish_run(self, summary: dict[str, Any], run_dir: str | Path | None = None) -> str:
        """Write stages, artifacts and benchmarks and the final status in ONE transaction."""
        problems = row_problems(summary)
        if problems:
            raise ConfigError(f"summary of run {str(summary.get('run_id'))[:80]!r}: {len(problems)} value(s) the "
                              "results store cannot hold", problems=problems[:10],
                              hint="the summary.json was edited or written by another tool; re-run to rewrite it")
        run_id = str(summary["run_id"])
        status = summary.get("status") or "complete"
        if status not in STATUSES:
            raise ConfigError(f"summary status {status!r} is not one of {', '.join(STATUSES)}")
        baseline = summary.get("baseline") or {}
        gate = summary.get("gate") or {}
        values = {"recipe": summary["recipe"], "device": summary["device"], "status": status,
                  "started": summary.get("started"), "finished": summary.get("finished") or now_iso(),
                  "edgepipe_version": summary.get("edgepipe_version"),
                  "baseline_accuracy": baseline.get("accuracy"), "baseline_params": baseline.get("params"),
                  "baseline_macs": baseline.get("macs"),
                  "gate_passed": gate.get("passed") if isinstance(gate.get("passed"), bool) else None,
                  "summary_json": strict_dumps(summary, "store: summary.json", sort_keys=True)}
        if run_dir is not None:
            values["run_dir"] = str(run_dir)
        with self.engine.begin() as conn:
            pk = self._upsert_run(conn, run_id, str(summary["device"]), values)
            for seq, st in enumerate(summary.get("stages") or []):
                conn.execute(insert(stages).values(run_pk=pk, seq=seq, name=st.get("name", "?"),
                                                   accuracy=st.get("accuracy"), params=st.get("params"),
                                                   macs=st.get("macs"), seconds=st.get("seconds")))
            for art in summary.get("artifacts") or []:
                self._insert_artifact(conn, pk, art)
        return run_id

    @staticmethod
    def _upsert_run(conn: Connection, run_id: str, device: str, values: dict[str, Any]) -> int:
        """The row of (run_id, device), created or updated, with its stages/artifacts/benchmarks cleared."""
        found = conn.execute(select(runs.c.id).where(runs.c.run_id == run_id, runs.c.device == device)).first()
        if found is None:
            return conn.execute(insert(runs).values(run_id=run_id, **values)).inserted_primary_key[0]
        pk = found[0]
        for table in (generations, benchmarks, artifacts, stages):
            conn.execute(delete(table).where(table.c.run_pk == pk))
        conn.execute(update(runs).where(runs.c.id == pk).values(**values))
        return pk

    @staticmethod
    def _insert_artifact(conn: Connection, pk: int, art: dict[str, Any]) -> None:
        gate = art.get("gate") or {}
        art_id = conn.execute(insert(artifacts).values(
            run_pk=pk, name=artifact_name(art), backend=art.get("backend"), precision=art.get("precision"),
            file=art.get("file"), sha256=art.get("sha256"), bytes=art.get("bytes"), accuracy=art.get("accuracy"),
            valid=bool(art.get("valid")), error=art.get("error"),
            gate_passed=gate.get("passed") if isinstance(gate.get("passed"), bool) else None,
            parent=strict_dumps(art["parent"], "store: artifact parent")
            if isinstance(art.get("parent"), (dict, list)) else art.get("parent"),
        )).inserted_primary_key[0]
        lat = art.get("latency_ms")
        if lat:
            bench = art.get("bench") or {}
            conn.execute(insert(benchmarks).values(
                artifact_id=art_id, run_pk=pk,
                runtime=bench.get("runtime") or (art.get("environment") or {}).get("runtime"),
                p50=lat.get("p50"), p90=lat.get("p90"), p99=lat.get("p99"), mean=lat.get("mean"),
                std=lat.get("std"), n=lat.get("n"), valid=bool(art.get("valid")),
                invalid_reasons=strict_dumps(bench.get("invalid_reasons") or art.get("invalid_reasons") or [],
                                             "store: invalid_reasons"),
                record_json=strict_dumps(bench, "store: bench record", sort_keys=True) if bench else None))
        gen = art.get("generation")
        if isinstance(gen, dict):
            def stat_of(value: Any) -> float | None:
                return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

            def stat(key: str, which: str) -> float | None:
                return stat_of((gen.get(key) or {}).get(which))

            conn.execute(insert(generations).values(
                artifact_id=art_id, run_pk=pk, prompt_len=gen.get("prompt_len"), new_tokens=gen.get("new_tokens"),
                ttft_p50_ms=stat("ttft_ms", "p50"), ttft_p90_ms=stat("ttft_ms", "p90"),
                decode_tokens_per_s_p50=stat("decode_tokens_per_s", "p50"),
                decode_tokens_per_s_p90=stat("decode_tokens_per_s", "p90"),
                n=(gen.get("decode_tokens_per_s") or {}).get("n"),
                peak_rss_mb=stat_of(gen.get("peak_rss_mb")),
                valid=gen.get("valid") is True, why=str(gen.get("why") or "")[:2000] or None,
                greedy_matches_torch=gen.get("greedy_matches_torch")
                if isinstance(gen.get("greedy_matches_torch"), bool) else None,
                greedy_agreement=gen.get("greedy_agreement")
                if isinstance(gen.get("greedy_agreement"), (int, float)) else None))

    @store_errors
    def record_summary(self, summary: dict[str, Any], run_dir: str | Path | None = None) -> str:
        """Import a finished summary (e.g. an existing run folder) in one transaction."""
        return self.finish_run(summary, run_dir)

    # ---------------------------------------------------------------------------------------------- reads
    @store_errors
    def get_run(self, run_id: str, device: str | None = None) -> dict[str, Any] | None:
        """One run with its stages, artifacts and benchmarks (the newest, when a fleet run has several devices)."""
        query = select(runs).where(runs.c.run_id == run_id)
        if device is not None:
            query = query.where(runs.c.device == device)
        with self.engine.connect() as conn:
            row = conn.execute(query.order_by(runs.c.id.desc())).mappings().first()
            if row is None:
                return None
            out, pk = dict(row), row["id"]
            out["stages"] = [dict(r) for r in conn.execute(
                select(stages).where(stages.c.run_pk == pk).order_by(stages.c.seq)).mappings()]
            arts = [dict(r) for r in conn.execute(
                select(artifacts).where(artifacts.c.run_pk == pk).order_by(artifacts.c.id)).mappings()]
            bench_rows = {r["artifact_id"]: dict(r) for r in conn.execute(
                select(benchmarks).where(benchmarks.c.run_pk == pk)).mappings()}
            gen_rows = {r["artifact_id"]: dict(r) for r in conn.execute(
                select(generations).where(generations.c.run_pk == pk)).mappings()}
        for a in arts:
            a["benchmark"] = bench_rows.get(a["id"])
            a["generation"] = gen_rows.get(a["id"])
        out["artifacts"] = arts
        return out

    def close(self) -> None:
        self.engine.dispose()


DEFAULT_DB_TIMEOUT = 30.0


def db_timeout() -> float:
    """Seconds a store connection or statement may take: ``EDGEPIPE_DB_TIMEOUT``, else 30."""
    return env_seconds("EDGEPIPE_DB_TIMEOUT", DEFAULT_DB_TIMEOUT, 86400)


def connect_args(url: str, timeout: float) -> dict[str, Any]:
    """Per-driver timeouts, so a server that accepts and never answers (a hung PostgreSQL, a firewall that
    swallows packets) fails in ``timeout`` seconds instead of hanging a run forever: the connect, the socket reads
    and, server side, every statement."""
    parsed = make_url(url)
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend == "sqlite":
        # two runs finishing at once wait for each other's (short) transaction instead of failing "database is locked"
        return {"timeout": timeout}
    if backend == "postgresql" and driver == "pg8000":
        return {"timeout": timeout, "startup_params": {"statement_timeout": str(int(timeout * 1000))}}
    if backend == "postgresql":   # libpq drivers (psycopg2, psycopg)
        return {"connect_timeout": max(1, int(timeout)), "options": f"-c statement_timeout={int(timeout * 1000)}"}
    return {}


def open_store(location: str | os.PathLike[str] | None = None) -> Store:
    """Open (and migrate) the store at a URL or SQLite path; default: see the module docstring."""
    url = store_url(location)
    timeout = db_timeout()
    try:
        return Store(create_engine(url, connect_args=connect_args(url, timeout)))
    except ModuleNotFoundError as exc:
        raise ConfigError(f"results store {url.split('://')[0]}: database driver {exc.name!r} is not installed",
                          hint=f"pip install {exc.name}") from exc
    except (SQLAlchemyError, OSError) as exc:   # pg8000 lets a socket timeout through unwrapped
        first = f"{type(exc).__name__}: " + ((str(exc).splitlines() or [""])[0][:240])
        raise ConfigError(f"results store {make_url(url).render_as_string(hide_password=True)} cannot be opened: "
                          f"{first}", hint=f"check EDGEPIPE_DB (a file path or a database URL); a server that does "
                          f"not answer within EDGEPIPE_DB_TIMEOUT={timeout:g} s is given up on") from None


def record_summary(summary: dict[str, Any] | None = None, run_dir: str | Path | None = None,
                   store: Store | None = None) -> str:
    """Import one run folder (or an in-memory summary) into the store; returns the run id."""
    if summary is None:
        if run_dir is None:
            raise ConfigError("record_summary needs a summary or a run folder")
        summary = load_summary(run_dir)
    own = store is None
    st = store or open_store()
    try:
        return st.record_summary(summary, Path(run_dir).resolve() if run_dir else None)
    finally:
        if own:
            st.close()
