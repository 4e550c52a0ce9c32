"""Load a synthetic run into a SQL database (SQLite by default, or PostgreSQL).

The schema comes from ``database/schema.sql`` (portable DDL, CHECK constraints
and foreign keys throughout). Tables are inserted parents first, in chunks,
with pandas ``to_sql`` on a SQLAlchemy engine, so every row passes the
database's own constraint checks. SQLite runs with ``PRAGMA foreign_keys=ON``.
The default SQLite file is built under a temporary name and renamed into
place, so a failed load never leaves a half-filled database behind.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

from fitsense.errors import StageError
from fitsense.runs import RunContext, atomic_path

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "database" / "schema.sql"
CHUNK_ROWS = 50_000
DEFAULT_DB_NAME = "fitsense.sqlite"


class DatabaseLoadError(StageError):
    """A table that the database refused (constraint violation, bad type); names the table."""


def schema_statements(path: Path = SCHEMA_PATH) -> list[str]:
    """The DDL statements of schema.sql, in file order (comments removed)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the SQL schema ships with the repository")
    body = "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]


def schema_tables(path: Path = SCHEMA_PATH) -> list[str]:
    """Table names in schema order: parents before children (the insert order)."""
    return [m.group(1) for s in schema_statements(path) if (m := re.match(r"CREATE TABLE\s+(\w+)", s, re.I))]


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _foreign_keys_on(dbapi_conn, _record):  # per connection: SQLite defaults to off
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    return engine


def create_schema(conn: Connection, path: Path = SCHEMA_PATH) -> list[str]:
    """Drop (children first) and create every table of schema.sql; returns the tables."""
    tables = schema_tables(path)
    for table in reversed(tables):
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    for statement in schema_statements(path):
        conn.execute(text(statement))
    return tables


def _copy_rows(table, conn, keys, data_iter) -> int:
    """pandas ``to_sql`` insert method for PostgreSQL: COPY FROM STDIN (psycopg 3), far faster than INSERTs."""
    columns = ", ".join(keys)
    n = 0
    with conn.connection.cursor() as cur:
        with cur.copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy:
            for row in data_iter:
                copy.write_row(row)
                n += 1
    return n


def insert_tables(conn: Connection, source_dir: Path, tables: list[str], chunk_rows: int = CHUNK_ROWS) -> dict[str, int]:
    """Insert ``<table>.parquet`` from ``source_dir`` for each table, in order; returns rows inserted."""
    dialect = conn.engine.dialect
    method = _copy_rows if dialect.name == "postgresql" and dialect.driver == "psycopg" else None
    driver = getattr(dialect, "loaded_dbapi", None)
    errors = (DBAPIError, pd.errors.DatabaseError) + ((driver.Error,) if driver else ())
    counts: dict[str, int] = {}
    for table in tables:
        path = source_dir / f"{table}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the synthetic run has no '{table}' table")
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            frame = batch.to_pandas()  # dates arrive as datetime.date, stored as DATE by each dialect
            try:
                frame.to_sql(table, conn, if_exists="append", index=False, method=method)
            except errors as exc:
                cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) else exc  # pandas wraps it
                reason = getattr(cause, "orig", None) or cause or exc
                raise DatabaseLoadError(
                    f"{path.name} -> table {table}: rows {n + 1}..{n + len(frame)} rejected: {reason}"
                ) from None
            n += len(frame)
        counts[table] = n
        log.info("db: %s %d rows", table, n)
    return counts


def table_counts(conn: Connection, tables: list[str]) -> dict[str, int]:
    return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in tables}


def load_tables(url: str, source_dir: Path) -> dict[str, int]:
    """Create the schema at ``url`` and load every table from ``source_dir``; verified row counts.

    One transaction: on PostgreSQL (transactional DDL) a failed load leaves the previous data untouched.
    """
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            tables = create_schema(conn)
            inserted = insert_tables(conn, source_dir, tables)
            counts = table_counts(conn, tables)
            if counts != inserted:
                raise DatabaseLoadError(f"row counts differ after load: inserted {inserted}, found {counts}")
            if engine.dialect.name == "sqlite":
                orphans = conn.execute(text("PRAGMA foreign_key_check")).fetchall()
                if orphans:
                    raise DatabaseLoadError(f"foreign key check failed: {orphans[:5]}")
        return counts
    finally:
        engine.dispose()


def load_run_into_database(ctx: RunContext, url: str | None = None) -> dict:
    """Load the run's synthetic tables into ``url`` (default: ``<run>/database/fitsense.sqlite``).

    The default database sits beside, not inside, the synthetic folder, so loading it
    never changes the synthetic stage's outputs (which DVC tracks by hash).
    """
    source = ctx.require("synthetic", "manifest.json").parent
    started = time.perf_counter()
    if url:
        counts = load_tables(url, source)
        where = make_url(url).render_as_string(hide_password=True)
    else:
        target = ctx.stage_dir("database") / DEFAULT_DB_NAME
        with atomic_path(target) as tmp:
            counts = load_tables(f"sqlite:///{tmp}", source)
        where = f"sqlite:///{target}"
    seconds = round(time.perf_counter() - started, 2)
    log.info("db: loaded %d rows into %s in %.1fs", sum(counts.values()), where, seconds)
    return {"url": where, "rows": counts, "seconds": seconds}
