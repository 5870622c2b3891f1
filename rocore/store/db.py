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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "reviews.db.schema"
SCHEMA_SQL = SCHEMA_PATH.read_text(encoding="utf-8")
SCHEMA_VERSION = int(re.search(r"^-- schema_version: (\d+)$", SCHEMA_SQL, re.MULTILINE).group(1))

# Steps that bring a database from version N-1 to N, for changes the idempotent schema file cannot
# make on its own: new columns, table rebuilds (`store[table].transform(...)`), data moves. A step
# gets the store as a `sqlite_utils.Database` and runs with foreign keys off inside the migration's
# one write transaction (see `ensure_schema`). New tables, indexes and triggers need no step: the
# schema file is applied after the steps. Version 1 is the schema file itself.
Step = Callable[["sqlite_utils.Database"], None]


def _prompt_formats_and_finish_reasons(store: sqlite_utils.Database) -> None:
    """Version 2: runs record their prompt format, outputs their prompt and why they ended. Old rows
    keep NULL (not recorded): guessing would put a layout or a stop on record that no one saw."""
    for table in ("training_runs", "generation_runs"):
        store.execute(f"ALTER TABLE {table} ADD COLUMN prompt_format TEXT "
                      "CHECK (prompt_format IS NULL OR prompt_format IN ('plain', 'chat'))")
    store.execute("ALTER TABLE generations ADD COLUMN finish_reason TEXT "
                  "CHECK (finish_reason IS NULL OR finish_reason IN ('stop', 'length'))")
    store.execute("ALTER TABLE generations ADD COLUMN prompt TEXT")


MIGRATIONS: dict[int, Step] = {2: _prompt_formats_and_finish_reasons}

BUSY_TIMEOUT_S = 30.0

# The SQL expression of the current time, in the form the schema's defaults store.
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


class SchemaError(RuntimeError):
    """The database cannot be used by this version of rocore."""


def _stored_version(conn: sqlite3.Connection) -> int:
    """Plain SQL rather than sqlite-utils: every connection asks this, and importing sqlite-utils
    (which imports pandas) would add about half a second to every process that opens the store."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def ensure_schema(conn: sqlite3.Connection) -> int:
    """Create or migrate the schema to SCHEMA_VERSION, once, even with several processes racing.

    The steps, the schema file and the version rows commit together or not at all, under the write
    lock, and the version is read again under it so that only the first process migrates. Foreign
    keys are switched off first, outside the transaction (inside one the pragma does nothing):
    with them on, a step that rebuilds a table (create, copy, drop, rename) would cascade-delete the
    rows that reference it. `PRAGMA foreign_key_check` before the commit takes their place.
    """
    if _stored_version(conn) == SCHEMA_VERSION:
        return SCHEMA_VERSION
    conn.execute("PRAGMA foreign_keys = OFF")
    if conn.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise SchemaError("cannot migrate inside an open transaction: foreign keys cannot be switched off")
    try:
        with transaction(conn):
            version = _stored_version(conn)
            if version == SCHEMA_VERSION:
                return SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"this database has schema version {version}, but this rocore knows only up to "
                    f"{SCHEMA_VERSION}: update rocore before opening it"
                )
            store = _store(conn)
            if version:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    if step in MIGRATIONS:
                        _run_step(store, step)
            store.executescript(SCHEMA_SQL)
            for step in range(version + 1, SCHEMA_VERSION + 1):
                conn.execute(
                    "INSERT INTO schema_migrations (version, description) VALUES (?, ?)",
                    (step, "created from reviews.db.schema" if not version else f"migrated from {step - 1}"),
                )
            _check_foreign_keys(conn, version)
    finally:
        conn.execute("PRAGMA foreign_keys = ON")
    return SCHEMA_VERSION


def _store(conn: sqlite3.Connection) -> sqlite_utils.Database:
    """The connection wrapped for the migration steps, its settings untouched (no recursive_triggers
    pragma, no plugin hooks). Imported here, not at the top, for the reason `_stored_version` gives."""
    import sqlite_utils

    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


def _run_step(store: sqlite_utils.Database, step: int) -> None:
    """Runs one step; its failure, from SQLite or from sqlite-utils, becomes a SchemaError that says
    which step failed (the caller's transaction rolls everything back)."""
    try:
        MIGRATIONS[step](store)
    except Exception as exc:
        raise SchemaError(f"migration to schema version {step} failed, nothing was changed: {exc}") from exc


def _check_foreign_keys(conn: sqlite3.Connection, version: int) -> None:
    """Stands in for the foreign key enforcement that is off while migrating: a step that leaves a row
    referring to a missing one aborts the whole migration."""
    broken: dict[tuple[str, str], list[int | None]] = {}
    for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check"):
        broken.setdefault((table, parent), []).append(rowid)
    if broken:
        shown = []
        for (table, parent), rowids in broken.items():
            named = [str(rowid) for rowid in rowids[:5] if rowid is not None]  # WITHOUT ROWID: none
            where = f", rowid {', '.join(named)}{', ...' if len(rowids) > 5 else ''}" if named else ""
            shown.append(f"{table} ({len(rowids)} row(s){where}) -> missing {parent}")
        raise SchemaError(
            f"migrating from schema version {version} to {SCHEMA_VERSION} would leave rows referring to missing "
            f"rows: {'; '.join(shown)}; rolled back, the database is unchanged"
        )


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
        conn.execute("COMMIT")
    except BaseException:
        # A failed COMMIT (a deferred constraint) leaves the transaction open, and some errors have
        # already rolled it back: end it either way, so the next statement does not join it.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def default_db_path() -> Path:
    """The database the app and CLI use when none is named: $ROCORE_DB, else the demo's."""
    return Path(os.environ.get("ROCORE_DB", "demo/reviews.db"))
