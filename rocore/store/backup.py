"""Backups of the store, taken while the app and training processes keep writing, and the restore check.

`backup_database` copies the database with SQLite's online backup API, page by page, from one read
snapshot of the source: in WAL mode a reader never blocks writers, so the app and a training run
carry on while it runs, and the copy is the database as it was at one committed moment (the backup
reads every step inside one read transaction, so writes made meanwhile neither restart it nor leak
into it). The copy is written to a hidden temporary file beside the target, switched from WAL to a
rollback journal (so the one file is the whole database, with no -wal file needed), checked with
`PRAGMA integrity_check` and for a readable schema version, flushed to disk, and only then given
its final name; a backup that fails at any point leaves nothing under that name. The copy is
readable by its owner only (0600): it holds the same patient data as the database.

The backup is recorded in the source's audit log (action 'backup', entity 'backups': the target
path, size, page count and duration, never case text), which `last_backup` reads for the Admin page.

`verify_backup` is the restore check: it opens a copy read-only and reports its integrity, schema
version and rows per table. Restoring is copying a checked backup back over the database file while
the app and every training or generation process are stopped (docs/administration.md); rocore has
no command that overwrites a live database.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from rocore.store.audit import audit
from rocore.store.db import (BUSY_TIMEOUT_S, SCHEMA_VERSION, DatabaseMissing, SchemaError, stored_version,
                             transaction, unusable)

# Pages copied per backup step (4 MiB at SQLite's default 4 KiB page): small enough to report
# progress, large enough that a big store needs few steps.
PAGES_PER_STEP = 1024
# The integrity check's messages kept in a verification report; SQLite stops at 100 by default.
MAX_PROBLEMS = 10
# The sidecar files SQLite keeps beside a database: never a backup target.
_SIDECARS = ("-wal", "-shm", "-journal")

# progress(pages_remaining, pages_total) after each step (sqlite3.Connection.backup's callback, less
# its status argument). It runs while the snapshot is held; an exception from it aborts the backup.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BackupResult:
    source: Path
    path: Path
    bytes: int
    pages: int
    seconds: float
    schema_version: int
    # The copy is on the file system of the database: no protection against losing that disk.
    same_disk: bool = False

    def describe(self) -> str:
        return (f"backed up {self.source} to {self.path}: {self.bytes:,} bytes, {self.pages:,} pages, "
                f"schema version {self.schema_version}, integrity ok, in {self.seconds:.1f} s")


def backup_database(db_path: str | Path, out_path: str | Path, *, actor: str, client: str | None = None,
                    force: bool = False, progress: Progress | None = None,
                    pages_per_step: int = PAGES_PER_STEP) -> BackupResult:
    """Copy the store at `db_path` to `out_path` (a file, or an existing folder: then a file named
    after the database and the UTC time, `reviews-20250131T120000Z.db`) and audit it as `actor`.

    Refused, with a SchemaError and nothing written: a missing or unusable source, one that is not a
    rocore database or is of a newer schema, a target that exists (unless `force`), is the database or
    one of its sidecar files, or whose folder is missing or unwritable, and a copy that fails its
    integrity check. The source is not migrated: a backup taken before an upgrade keeps the old schema.
    """
    started = time.monotonic()
    db_path = Path(db_path)
    out = _target(db_path, Path(out_path), force)
    src = _open_source(db_path)
    tmp: Path | None = None
    try:
        tmp = _temporary_file(out)
        pages, version = _copy(src, db_path, tmp, out, progress, pages_per_step)
        size = tmp.stat().st_size
        seconds = time.monotonic() - started
        detail = {"path": str(out.absolute()), "bytes": size, "pages": pages, "seconds": round(seconds, 3),
                  "schema_version": version}
        # The audit row and the final name land together: a backup not recorded keeps no file under
        # its name, and a file that could not be named is not recorded.
        placed = False
        try:
            with transaction(src):
                audit(src, actor, "backup", "backups", None, detail, client)
                _put_in_place(tmp, out, force)
                placed = True
        except BaseException as exc:
            if placed:
                _remove(out)
            if isinstance(exc, SchemaError) and not str(exc).startswith(f"{out}:"):
                raise SchemaError(f"{exc}; the backup was not recorded in its audit log, so no backup was "
                                  f"written to {out}") from exc
            raise
        tmp = None
        _sync_folder(out.parent)
        return BackupResult(db_path, out, size, pages, seconds, version, _same_disk(db_path, out))
    except sqlite3.Error as exc:
        raise SchemaError(f"{db_path}: {_cause(unusable(db_path, exc))}; no backup was written to {out}") from exc
    finally:
        src.close()
        if tmp is not None:
            _remove(tmp)


def last_backup(conn: sqlite3.Connection) -> dict | None:
    """The newest backup recorded in this database's audit log: `at` (the schema's UTC timestamp),
    `path`, `actor`, `client`, `bytes`, `pages`, `seconds`; None if it was never backed up."""
    row = conn.execute("SELECT at, actor, client, detail FROM audit_log WHERE entity = 'backups' "
                       "AND action = 'backup' ORDER BY audit_id DESC LIMIT 1").fetchone()
    if row is None:
        return None
    detail = json.loads(row[3])
    return {"at": row[0], "path": detail.get("path"), "actor": row[1], "client": row[2],
            "bytes": detail.get("bytes"), "pages": detail.get("pages"), "seconds": detail.get("seconds")}


def verify_backup(path: str | Path) -> dict:
    """The restore check of a backup: opened read-only (nothing is written beside it), its
    `integrity_check`, schema version and rows per table. It compares nothing else.

    Returns `path`, `ok`, `problems` (one sentence each; empty when ok), `integrity` ("ok" or
    SQLite's first messages), `schema_version`, `journal_mode` ("delete" for a rocore backup: one
    self-contained file), `bytes` and `tables` ({table: rows}, in the schema's order). A missing path
    raises SchemaError; everything wrong with the file itself is a problem in the report.
    """
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: {'not a file' if path.exists() else 'no such file'}; nothing to check")
    report: dict = {"path": str(path), "ok": False, "problems": [], "integrity": None, "schema_version": None,
                    "journal_mode": None, "bytes": path.stat().st_size, "tables": {}}
    problems = report["problems"]
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
    except sqlite3.Error as exc:
        problems.append(_cause(unusable(path, exc)))
        return report
    try:
        report["journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
        messages = [r[0] for r in conn.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})")]
        report["integrity"] = "ok" if messages == ["ok"] else messages
        if messages != ["ok"]:
            problems.append(f"the integrity check failed: {'; '.join(messages)}")
        version = report["schema_version"] = stored_version(conn)
        if not version:
            problems.append("no schema version: not a rocore database")
        elif version > SCHEMA_VERSION:
            problems.append(f"schema version {version} is newer than this rocore knows ({SCHEMA_VERSION}): "
                            "update rocore before restoring it")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite%' ORDER BY rowid")]
        for table in tables:
            quoted = '"' + table.replace('"', '""') + '"'
            report["tables"][table] = conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
    except sqlite3.Error as exc:
        problems.append(_cause(unusable(path, exc)))
    finally:
        conn.close()
    if report["journal_mode"] == "wal":
        problems.append("it is in WAL mode, so recent changes may be in a -wal file beside it rather than in it "
                        "(not a copy made by 'python -m rocore backup')")
    report["ok"] = not problems
    return report


def describe_verification(report: dict) -> str:
    """The restore check's result as one line."""
    if not report["ok"]:
        return f"{report['path']}: restore check FAILED: {'; '.join(report['problems'])}"
    rows = ", ".join(f"{table} {n:,}" for table, n in report["tables"].items())
    return (f"{report['path']}: restore check passed: integrity ok, schema version {report['schema_version']}, "
            f"{report['bytes']:,} bytes; rows: {rows}")


def _cause(error: SchemaError) -> str:
    """`unusable`'s message without the path it starts with (the caller names the file)."""
    text = str(error)
    return text.split(": ", 1)[1] if ": " in text else text


def _target(db_path: Path, out: Path, force: bool) -> Path:
    try:
        return _checked_target(db_path, out, force)
    except OSError as exc:
        raise SchemaError(f"{out}: cannot be used for a backup ({exc.strerror}); no backup was written") from exc


def _checked_target(db_path: Path, out: Path, force: bool) -> Path:
    if out.is_dir():
        moment = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = out / f"{db_path.stem}-{moment}.db"
    if not db_path.exists():
        raise DatabaseMissing(db_path)
    source = db_path.resolve()
    if out.resolve() in {source, *(Path(f"{source}{suffix}") for suffix in _SIDECARS)} or (
            out.exists() and os.path.samefile(out, source)):
        raise SchemaError(f"{out}: is the database itself (or one of its files); a backup goes to another file, "
                          "on another disk")
    if not out.parent.is_dir():
        raise SchemaError(f"{out}: its folder {out.parent} does not exist; create it (on storage approved for "
                          "patient data) first")
    if out.is_dir():
        raise SchemaError(f"{out}: is a folder")
    if out.exists() and not force:
        raise SchemaError(f"{out}: already exists; choose a new name, or pass --force to replace it")
    return out


def _open_source(db_path: Path) -> sqlite3.Connection:
    """A plain connection, not `connect`: that would migrate an older store before it is backed up."""
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
    except sqlite3.Error as exc:
        raise unusable(db_path, exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        version = stored_version(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise unusable(db_path, exc) from exc
    if not version or version > SCHEMA_VERSION:
        conn.close()
        raise SchemaError(f"{db_path}: not a rocore database (no schema version)" if not version else
                          f"{db_path}: has schema version {version}, newer than this rocore knows "
                          f"({SCHEMA_VERSION}); back it up with the rocore that uses it")
    return conn


def _temporary_file(out: Path) -> Path:
    """An empty file, 0600, beside the target (so the final rename stays on one file system)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    except OSError as exc:
        raise SchemaError(f"{out}: cannot write in {out.parent} ({exc.strerror}); no backup was written") from exc
    os.close(fd)
    return Path(name)


def _copy(src: sqlite3.Connection, db_path: Path, tmp: Path, out: Path, progress: Progress | None,
          pages_per_step: int) -> tuple[int, int]:
    """Copy the source's snapshot into `tmp` and check it; returns (pages, schema version)."""
    # One read transaction around every step: the snapshot stays fixed while others commit, so the
    # copy is one committed state and other connections' writes never restart the backup.
    src.execute("BEGIN")
    try:
        version = stored_version(src)
        try:
            dst = sqlite3.connect(tmp, isolation_level=None)
        except sqlite3.Error as exc:
            raise SchemaError(f"{out}: {_cause(unusable(tmp, exc))}; no backup was written") from exc
        try:
            try:
                src.backup(dst, pages=pages_per_step,
                           progress=None if progress is None else lambda _, left, total: progress(left, total))
            finally:
                src.execute("COMMIT")
            _make_self_contained(dst, out)
            _check_copy(dst, db_path, out, version)
            pages = dst.execute("PRAGMA page_count").fetchone()[0]
        except sqlite3.Error as exc:
            raise SchemaError(f"{out}: the backup failed ({_cause(unusable(out, exc))}); no backup was written") \
                from exc
        finally:
            dst.close()
    finally:
        if src.in_transaction:
            src.execute("ROLLBACK")
    _sync_file(tmp, out)
    return pages, version


def _make_self_contained(dst: sqlite3.Connection, out: Path) -> None:
    """The copy carries the source's WAL flag; as a rollback-journal database it is complete in one file."""
    mode = dst.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    if mode != "delete":
        raise SchemaError(f"{out}: the copy could not be switched out of WAL mode (got {mode!r}); no backup was "
                          "written")


def _check_copy(dst: sqlite3.Connection, db_path: Path, out: Path, version: int) -> None:
    try:
        messages = [r[0] for r in dst.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})")]
    except sqlite3.DatabaseError as exc:  # damage the check cannot even walk past
        messages = [str(exc)]
    if messages != ["ok"]:
        raise SchemaError(f"{out}: the copy failed its integrity check ({'; '.join(messages)}): {db_path} itself, "
                          "or the disk written to, is damaged; no backup was written")
    copied = stored_version(dst)
    if copied != version:
        raise SchemaError(f"{out}: the copy's schema version ({copied}) is not the database's ({version}); "
                          "no backup was written")


def _sync_file(tmp: Path, out: Path) -> None:
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SchemaError(f"{out}: the copy could not be written to disk ({exc.strerror}); no backup was "
                          "written") from exc


def _put_in_place(tmp: Path, out: Path, force: bool) -> None:
    """The finished copy takes its final name in one step. Without `force` by a hard link, which fails
    if the name appeared meanwhile instead of replacing what another process put there."""
    try:
        os.chmod(tmp, 0o600)
        if force:
            os.replace(tmp, out)
            return
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise SchemaError(f"{out}: already exists; choose a new name, or pass --force to replace it") from None
        except OSError:
            # A file system without hard links: a narrow race remains between the check and the rename.
            if out.exists():
                raise SchemaError(f"{out}: already exists; choose a new name, or pass --force to replace it") \
                    from None
            os.replace(tmp, out)
            return
        with contextlib.suppress(OSError):  # the finished copy has its name; the caller removes `tmp` again
            tmp.unlink()
    except OSError as exc:
        raise SchemaError(f"{out}: the copy could not be given its name ({exc.strerror}); no backup was "
                          "written") from exc


def _sync_folder(folder: Path) -> None:
    """Make the new name durable; a folder that cannot be opened for it is no error (the file is whole)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _same_disk(db_path: Path, out: Path) -> bool:
    try:
        return db_path.stat().st_dev == out.stat().st_dev
    except OSError:
        return False


def _remove(tmp: Path) -> None:
    for leftover in (tmp, *(Path(f"{tmp}{suffix}") for suffix in _SIDECARS)):
        with contextlib.suppress(OSError):
            leftover.unlink()
