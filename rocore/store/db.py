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
import threading
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


def _cancelling_training_runs(store: sqlite_utils.Database) -> None:
    """Version 3: a cancelled training run stays 'cancelling' until its process has exited, and a run
    records the log of its process and its number of steps. SQLite cannot change a CHECK constraint in
    place, so the table is rebuilt from its own stored definition with the wider status list (create,
    copy, drop, rename: SQLite's documented procedure; foreign keys are off, so no metric is lost)."""
    narrow = "CHECK (status IN ('queued', 'running', 'finished', 'failed', 'cancelled'))"
    wide = "CHECK (status IN ('queued', 'running', 'cancelling', 'finished', 'failed', 'cancelled'))"
    sql = store.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'training_runs'").fetchone()[0]
    if narrow not in sql:
        raise ValueError(f"training_runs does not hold the status constraint of version 2 ({narrow})")
    store.execute(sql.replace(narrow, wide).replace("training_runs", "training_runs_v3", 1))
    store.execute("INSERT INTO training_runs_v3 SELECT * FROM training_runs")
    store.execute("DROP TABLE training_runs")
    store.execute("ALTER TABLE training_runs_v3 RENAME TO training_runs")
    store.execute("ALTER TABLE training_runs ADD COLUMN log_path TEXT")
    store.execute("ALTER TABLE training_runs ADD COLUMN total_steps INTEGER "
                  "CHECK (total_steps IS NULL OR total_steps >= 0)")


def _served_generation_and_processes(store: sqlite_utils.Database) -> None:
    """Version 4: a generation run records its backend (local, or an OpenAI-compatible server with its
    URL and served model name), and a training run how many processes trained it."""
    store.execute("ALTER TABLE training_runs ADD COLUMN processes INTEGER "
                  "CHECK (processes IS NULL OR processes >= 1)")
    store.execute("ALTER TABLE generation_runs ADD COLUMN backend TEXT NOT NULL DEFAULT 'local' "
                  "CHECK (backend IN ('local', 'openai'))")
    store.execute("ALTER TABLE generation_runs ADD COLUMN server_url TEXT")
    store.execute("ALTER TABLE generation_runs ADD COLUMN served_model TEXT")


def _closed_studies(store: sqlite_utils.Database) -> None:
    """Version 5: a study records when and by whom it was closed (NULL: open, as every older study is)."""
    store.execute("ALTER TABLE studies ADD COLUMN closed_at TEXT")
    store.execute("ALTER TABLE studies ADD COLUMN closed_by INTEGER REFERENCES reviewers (reviewer_id)")


def _adjudicators(store: sqlite_utils.Database) -> None:
    """Version 6: a study names its adjudicator (NULL: none yet, as in every older study); the
    adjudications table itself comes from the schema file."""
    store.execute("ALTER TABLE studies ADD COLUMN adjudicator_id INTEGER REFERENCES reviewers (reviewer_id)")


def _scales_and_practice(store: sqlite_utils.Database) -> None:
    """Version 7: ratings take the optional edit-level and harm scales (NULL in every older rating), and a
    study may name the runs of its practice cases; the practice and session tables come from the
    schema file."""
    for side in "ab":
        store.execute(f"ALTER TABLE ratings ADD COLUMN edit_{side} INTEGER CHECK (edit_{side} IS NULL OR "
                      f"(edit_{side} IN (0, 1, 2, 3) AND acceptable_{side} IS NOT NULL "
                      f"AND acceptable_{side} = (edit_{side} <= 1)))")
    for side in "ab":
        store.execute(f"ALTER TABLE ratings ADD COLUMN harm_{side} INTEGER "
                      f"CHECK (harm_{side} IS NULL OR harm_{side} IN (0, 1, 2))")
    for side in "ab":
        store.execute(f"ALTER TABLE ratings ADD COLUMN likelihood_{side} INTEGER CHECK (likelihood_{side} IS NULL "
                      f"OR (likelihood_{side} IN (0, 1, 2) AND harm_{side} IS NOT NULL AND harm_{side} > 0))")
    for number in (1, 2):
        store.execute(f"ALTER TABLE studies ADD COLUMN practice_run_{number}_id INTEGER "
                      "REFERENCES generation_runs (run_id)")


MIGRATIONS: dict[int, Step] = {2: _prompt_formats_and_finish_reasons, 3: _cancelling_training_runs,
                               4: _served_generation_and_processes, 5: _closed_studies, 6: _adjudicators,
                               7: _scales_and_practice}

BUSY_TIMEOUT_S = 30.0

# The SQL expression of the current time, in the form the schema's defaults store.
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


class SchemaError(RuntimeError):
    """The database cannot be used: missing, unreadable, unwritable, or of a schema this rocore does not know.
    `sqlite_errorcode`: SQLite's result code as `unusable` read it (a folder SQLite cannot write its -wal
    file in counts as read-only), for callers that word the cause for someone else."""

    def __init__(self, message: str, sqlite_errorcode: int | None = None) -> None:
        super().__init__(message)
        self.sqlite_errorcode = sqlite_errorcode


class DatabaseMissing(SchemaError):
    """No database at the path, and the caller did not ask for a new one: a mistyped path must not
    quietly become an empty store that offers its first visitor the administrator's account."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"{path}: no database here. Create an empty one with 'python -m rocore init --db {path}', or the "
            f"demo with 'python -m rocore demo --db {path}' ('make run' builds it at demo/reviews.db); "
            "or point $ROCORE_DB (or --db) at an existing database."
        )


# What each SQLite error means for the store, by result code (an extended code first, then its primary
# one): a read-only file, a full disk and a lock each need a different remedy, and none of them is
# "not a database". Each says what to do, as well as what went wrong.
_CAUSES = {
    sqlite3.SQLITE_READONLY: "the database cannot be written: the file, or the folder holding it, is read-only for "
                             "this user or on a read-only disk (rocore writes the file and its -wal and -shm "
                             "files beside it); make both writable for this user",
    sqlite3.SQLITE_CANTOPEN: "the database cannot be opened: check that it is a file, not a folder, and that this "
                             "user may read and write it and its folder",
    sqlite3.SQLITE_FULL: "the database cannot be written: the disk holding it is full; free some space and try again",
    sqlite3.SQLITE_BUSY: f"the database stayed locked by another process for more than {BUSY_TIMEOUT_S:.0f} s; "
                         "try again when it is done",
    sqlite3.SQLITE_LOCKED: "the database is locked by another connection of this process",
    sqlite3.SQLITE_NOTADB: "the file is not an SQLite database (is --db or $ROCORE_DB the right file?); point them "
                           "at the rocore database, or restore this one from a backup",
    sqlite3.SQLITE_CORRUPT: "the database file is damaged; restore it from a backup",
    sqlite3.SQLITE_IOERR: "the database could not be read or written: the disk reported an input/output error; "
                          "check the disk, then try again",
    # A write the system refused: EIO, but also EFBIG (a file size limit) or EDQUOT (a quota), which
    # SQLite reports as this rather than as SQLITE_FULL.
    sqlite3.SQLITE_IOERR_WRITE: "the database could not be written: the system refused the write (a full disk or "
                                "quota, a file size limit, or a failing disk); make room or lift the limit, then "
                                "try again",
}
# Errors that `transaction` and `opened` name with their file: they say nothing about the statement
# that met them.
_STORE_ERRORS = (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CORRUPT,
                 sqlite3.SQLITE_NOTADB)


def unusable(path: str | Path, exc: sqlite3.Error) -> SchemaError:
    """The error that says why the store at `path` failed, from SQLite's result code."""
    code = getattr(exc, "sqlite_errorcode", None) or 0
    if code & 0xFF == sqlite3.SQLITE_CANTOPEN and _in_read_only_folder(Path(path)):
        code = sqlite3.SQLITE_READONLY  # SQLite could not make the -wal or -shm file beside it
    cause = _CAUSES.get(code, _CAUSES.get(code & 0xFF, "not a usable SQLite database"))
    return SchemaError(f"{path}: {cause} (SQLite: {exc})", code)


def _is_store_error(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in _STORE_ERRORS


def _in_read_only_folder(path: Path) -> bool:
    """An existing file whose folder this user may not write (modes, `chattr +i`, a read-only mount)."""
    return path.is_file() and not os.access(path.parent, os.W_OK | os.X_OK)


def stored_version(conn: sqlite3.Connection) -> int:
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
    if stored_version(conn) == SCHEMA_VERSION:
        return SCHEMA_VERSION
    conn.execute("PRAGMA foreign_keys = OFF")
    if conn.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise SchemaError("cannot migrate inside an open transaction: foreign keys cannot be switched off")
    try:
        with transaction(conn):
            version = stored_version(conn)
            if version == SCHEMA_VERSION:
                return SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise SchemaError(
                    f"{database_file(conn)}: this database has schema version {version}, but this rocore knows "
                    f"only up to {SCHEMA_VERSION}: update rocore before opening it"
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
    pragma, no plugin hooks). Imported here, not at the top, for the reason `stored_version` gives."""
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


def connect(path: str | Path, *, create: bool = True) -> sqlite3.Connection:
    """A new connection with WAL, a busy timeout and foreign keys on, and the schema up to date.

    With `create=False` (the app, and the commands that need what a store already holds) a missing
    file is refused with DatabaseMissing instead of becoming a new, empty store; the file is opened
    in SQLite's `mode=rw`, so it is not created even if it disappears after the check.
    """
    path = Path(path)
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=True)
        else:
            if not path.exists():
                raise DatabaseMissing(path)
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                                   isolation_level=None, check_same_thread=True)
    except sqlite3.Error as exc:
        if not path.exists():
            if not create:
                raise DatabaseMissing(path) from exc
            raise SchemaError(f"{path}: the database cannot be created: its folder is read-only for this user or "
                              f"on a read-only disk (SQLite: {exc})") from exc
        raise unusable(path, exc) from exc
    except OSError as exc:
        raise SchemaError(f"{path}: cannot create its folder {path.parent} ({exc.strerror})") from exc
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
        raise unusable(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def create_database(path: str | Path) -> Path:
    """A new, empty store at `path`, with the schema applied; refused if anything is there already.

    The file is created exclusively (O_EXCL), so two callers racing, or a store that appears in the
    meantime, cannot both succeed; a store left half-made by an error is removed again.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        raise SchemaError(f"{path}: already exists; 'init' makes only new databases") from None
    except OSError as exc:
        raise SchemaError(f"{path}: cannot be created ({exc.strerror})") from exc
    try:
        with opened(path, create=False):
            pass
    except BaseException:
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def opened(path: str | Path, *, create: bool = True) -> Iterator[sqlite3.Connection]:
    """`connect`, closed on exit: the usual way to run one operation. A damaged file or a disk error
    met inside, in a read as in a write, becomes a SchemaError naming the file and the cause."""
    conn = connect(path, create=create)
    try:
        yield conn
    except sqlite3.Error as exc:
        if _is_store_error(exc):  # a damaged page or a failing disk met by a read outside `transaction`
            raise unusable(path, exc) from exc
        raise
    finally:
        conn.close()


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the write lock up front, so it cannot deadlock half-way.

    A read-only file, a full disk or a disk error met in it becomes a SchemaError naming the file
    and the cause, whichever statement met it; other errors (constraints, a lock) pass unchanged.
    """
    with _queued_for_writing(conn):
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            _raise_if_store_error(conn, exc)
            raise
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            # A failed COMMIT (a deferred constraint) leaves the transaction open, and some errors have
            # already rolled it back: end it either way, so the next statement does not join it.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            _raise_if_store_error(conn, exc)
            raise


# One queue per database file for the threads of this process that want to write. SQLite's busy
# handler lets waiting writers poll with growing sleeps, and under a steady stream of writes (the app
# serves every browser session on a thread of one process) an unlucky one can lose the race for
# seconds on end: 20 reviewers rating without pause saw p99 1.3 s and 5.6 s at worst, against 0.3 s
# and 0.7 s when queued (docs/benchmarks.md, bench/load.py). Reentrant, so a thread that nests
# transactions on two connections meets SQLite's busy timeout as before, not a deadlock.
_WRITE_QUEUES: dict[str, threading.RLock] = {}
_WRITE_QUEUES_GUARD = threading.Lock()


@contextlib.contextmanager
def _queued_for_writing(conn: sqlite3.Connection) -> Iterator[None]:
    """Waits behind this process's other writers of the same file, for at most the busy timeout."""
    path = database_file(conn)
    with _WRITE_QUEUES_GUARD:
        queue = _WRITE_QUEUES.setdefault(path, threading.RLock())
    if not queue.acquire(timeout=BUSY_TIMEOUT_S):
        locked = sqlite3.OperationalError("database is locked (by another thread of this process)")
        locked.sqlite_errorcode, locked.sqlite_errorname = sqlite3.SQLITE_BUSY, "SQLITE_BUSY"
        raise locked
    try:
        yield
    finally:
        queue.release()


def _raise_if_store_error(conn: sqlite3.Connection, exc: BaseException) -> None:
    if _is_store_error(exc):
        raise unusable(database_file(conn), exc) from exc


def database_file(conn: sqlite3.Connection) -> str:
    """The file of a connection's main database ('' for an in-memory one)."""
    return conn.execute("PRAGMA database_list").fetchone()[2]


def default_db_path() -> Path:
    """The database the app and CLI use when none is named: $ROCORE_DB, else the demo's."""
    return Path(os.environ.get("ROCORE_DB", "demo/reviews.db"))
