"""Opening the SQLite store: schema, migrations, and the connection settings every caller needs.

Streamlit serves each browser session on its own thread and training runs in another process, so
every operation opens its own connection (`connect` or `opened`), writes in short `BEGIN IMMEDIATE`
transactions, and relies on WAL and a busy timeout instead of sharing a connection.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "reviews.db.schema"
SCHEMA_SQL = SCHEMA_PATH.read_text(encoding="utf-8")
SCHEMA_VERSION = int(re.search(r"^-- schema_version: (\d+)$", SCHEMA_SQL, re.MULTILINE).group(1))

# SQL that brings a database from version N-1 to N, for changes the idempotent schema file cannot
# make on its own (ALTER TABLE, data moves). New tables and indexes need no step: the schema file
# is applied after the steps. Version 1 is the schema file itself.
MIGRATIONS: dict[int, str] = {}

BUSY_TIMEOUT_S = 30.0

# The SQL expression of the current time, in the form the schema's defaults store.
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


class SchemaError(RuntimeError):
    """The database cannot be used by this version of rocore."""


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements, keeping trigger bodies (`BEGIN ... END;`) whole."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                yield pending.strip()
            pending = ""
    if pending.strip():
        raise SchemaError(f"incomplete SQL statement at the end of the schema: {pending.strip()[:80]}")


def _stored_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def ensure_schema(conn: sqlite3.Connection) -> int:
    """Create or migrate the schema to SCHEMA_VERSION, once, even with several processes racing."""
    if _stored_version(conn) == SCHEMA_VERSION:
        return SCHEMA_VERSION
    with transaction(conn):
        version = _stored_version(conn)
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"this database has schema version {version}, but this rocore knows only up to "
                f"{SCHEMA_VERSION}: update rocore before opening it"
            )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            if version and step in MIGRATIONS:
                for statement in _statements(MIGRATIONS[step]):
                    conn.execute(statement)
        for statement in _statements(SCHEMA_SQL):
            conn.execute(statement)
        for step in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                (step, "created from reviews.db.schema" if not version else f"migrated from {step - 1}"),
            )
    return SCHEMA_VERSION


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """Switching a new file to WAL needs an exclusive lock that SQLite does not wait for through the
    busy handler, so connections racing to open a new database retry until the busy timeout."""
    deadline, delay = time.monotonic() + BUSY_TIMEOUT_S, 0.005
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(2 * delay, 0.1)


def connect(path: str | Path) -> sqlite3.Connection:
    """A new connection with WAL, a busy timeout and foreign keys on, and the schema up to date."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = _switch_to_wal(conn)
        if mode != "wal":
            raise SchemaError(f"{path}: could not switch to WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        ensure_schema(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise SchemaError(f"{path}: not a usable SQLite database ({exc})") from exc
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def opened(path: str | Path) -> Iterator[sqlite3.Connection]:
    """`connect`, closed on exit: the usual way to run one operation."""
    conn = connect(path)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the write lock up front, so it cannot deadlock half-way."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def default_db_path() -> Path:
    """The database the app and CLI use when none is named: $ROCORE_DB, else the demo's."""
    return Path(os.environ.get("ROCORE_DB", "demo/reviews.db"))
