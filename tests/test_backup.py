"""Backups taken while others write, on real SQLite files: one consistent, self-contained, private file
under the final name or none at all, recorded in the audit log, and the restore check that reads it."""

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from test_cli import rocore

from rocore.store.audit import audit
from rocore.store.backup import backup_database, describe_verification, last_backup, verify_backup
from rocore.store.db import SCHEMA_VERSION, SchemaError, opened, transaction

CASES_PER_IMPORT = 5


def _import_batch(conn: sqlite3.Connection, batch: int) -> None:
    """One committed state: an import, its cases and its audit row, all or nothing."""
    with transaction(conn):
        import_id = conn.execute(
            "INSERT INTO imports (source_file, sha256, n_rows, n_inserted, n_updated, n_rejected) "
            "VALUES (?, 'x', ?, ?, 0, 0)", (f"batch{batch}.csv", CASES_PER_IMPORT, CASES_PER_IMPORT)).lastrowid
        conn.executemany(
            "INSERT INTO cases (case_id, diagnosis, regimen, modality, icd10, source_file, source_row, import_id) "
            "VALUES (?, ?, '60 Gy in 20 fractions', 'photon', 'C61', 'f', ?, ?)",
            [(f"B{batch}-{i}", f"case {batch}-{i}: " + "prostate adenocarcinoma " * 40, i, import_id)
             for i in range(CASES_PER_IMPORT)])
        audit(conn, "writer", "import", "imports", import_id, {"n": CASES_PER_IMPORT})


def _counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("imports", "cases", "audit_log")}


def _consistent(counts: dict[str, int]) -> bool:
    """Every import came with all its cases and its audit row (the copy's own backup rows aside)."""
    return counts["cases"] == CASES_PER_IMPORT * counts["imports"]


def _damage(path: Path) -> None:
    """Garbage over a whole page in the middle of the file, where the cases table lives."""
    page = 4096
    middle = (path.stat().st_size // page // 2) * page
    with path.open("r+b") as f:
        f.seek(middle)
        f.write(b"\xa5" * page)


@pytest.fixture
def populated(db_path: Path) -> Path:
    with opened(db_path) as conn:
        for batch in range(40):
            _import_batch(conn, batch)
    return db_path


def test_a_backup_taken_while_another_connection_writes_is_one_committed_state(populated, tmp_path):
    before = _counts(populated)
    stop, writes_seen = threading.Event(), threading.Event()
    committed, errors = [], []

    def writer():
        try:
            with opened(populated, create=False) as conn:
                batch = 1000
                while not stop.is_set():
                    _import_batch(conn, batch)
                    committed.append(batch)
                    batch += 1
                    if len(committed) >= 5:
                        writes_seen.set()
        except BaseException as exc:  # noqa: BLE001 (reported below, not lost in the thread)
            errors.append(exc)
            writes_seen.set()

    steps = []

    def progress(remaining, total):
        # After the first step, hold the backup until the writer has committed more batches: they
        # land in the WAL while the backup's snapshot is open and must not reach the copy.
        if not steps:
            thread.start()
            assert writes_seen.wait(30), "the writer was blocked by the backup"
        steps.append((remaining, total))

    thread = threading.Thread(target=writer)
    out = tmp_path / "backups" / "copy.db"
    out.parent.mkdir()
    try:
        result = backup_database(populated, out, actor="tester", client="test", progress=progress,
                                 pages_per_step=8)
    finally:
        stop.set()
        if thread.is_alive() or steps:
            thread.join(30)
    assert not errors, errors
    assert len(steps) > 3 and steps[-1][0] == 0, "the copy was made in several steps"
    assert len(committed) >= 5
    copied = _counts(out)
    assert _consistent(copied)
    assert copied == before, "the copy is the state when the backup began, none of the writes made during it"
    after = _counts(populated)
    assert after["imports"] == before["imports"] + len(committed) and _consistent(after)
    assert result.pages == result.bytes // 4096 and result.schema_version == SCHEMA_VERSION
    report = verify_backup(out)
    assert report["ok"] and report["integrity"] == "ok" and report["problems"] == []
    assert report["tables"]["cases"] == copied["cases"] and report["tables"]["imports"] == copied["imports"]


def test_the_copy_is_one_private_self_contained_file(populated, tmp_path):
    with opened(populated, create=False) as app:  # open, as the app is: the -wal file stays
        app.execute("PRAGMA wal_autocheckpoint = 0")
        _import_batch(app, 99)  # committed, in the -wal file only so far
        main_file_alone = tmp_path / "cp.db"
        main_file_alone.write_bytes(populated.read_bytes())
        with sqlite3.connect(f"{main_file_alone.as_uri()}?immutable=1", uri=True) as conn:
            assert conn.execute("SELECT count(*) FROM cases WHERE case_id LIKE 'B99-%'").fetchone()[0] == 0, \
                "copying the main file alone would lose the newest commit"
        main_file_alone.unlink()
        out = tmp_path / "copy.db"
        result = backup_database(populated, out, actor="tester")
    assert result.path == out and result.bytes == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "store"], "no -wal, -shm or partial file"
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.read_bytes()[18:20] == b"\x01\x01", "a rollback-journal file, not a WAL one"
    moved = tmp_path / "elsewhere" / "restored.db"
    moved.parent.mkdir()
    out.rename(moved)  # alone, without anything from beside the database
    with sqlite3.connect(f"{moved.as_uri()}?immutable=1", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM cases WHERE case_id LIKE 'B99-%'").fetchone()[0] == CASES_PER_IMPORT
    assert verify_backup(moved)["journal_mode"] == "delete"
    with opened(moved, create=False) as conn:  # restored: the app's connection takes it back to WAL
        assert conn.execute("SELECT count(*) FROM imports").fetchone()[0] == 41


def test_an_existing_file_and_the_database_itself_are_refused(populated, tmp_path):
    out = tmp_path / "copy.db"
    out.write_bytes(b"an older backup")
    with pytest.raises(SchemaError, match="already exists; choose a new name, or pass --force"):
        backup_database(populated, out, actor="tester")
    assert out.read_bytes() == b"an older backup"
    backup_database(populated, out, actor="tester", force=True)
    assert verify_backup(out)["ok"] and out.stat().st_mode & 0o777 == 0o600
    for target in (populated, Path(f"{populated}-wal"), populated.parent / ".." / "store" / populated.name):
        with pytest.raises(SchemaError, match="is the database itself"):
            backup_database(populated, target, actor="tester", force=True)
    linked = tmp_path / "linked.db"
    os.link(populated, linked)
    with pytest.raises(SchemaError, match="is the database itself"):
        backup_database(populated, linked, actor="tester", force=True)
    assert _consistent(_counts(populated))
    with pytest.raises(SchemaError, match="no database here"):
        backup_database(tmp_path / "typo.db", tmp_path / "x.db", actor="tester")
    plain = tmp_path / "plain.db"
    sqlite3.connect(plain).close()
    with pytest.raises(SchemaError, match="not a rocore database"):
        backup_database(plain, tmp_path / "x.db", actor="tester")
    assert not (tmp_path / "x.db").exists()


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_failed_backup_leaves_nothing_under_its_name(populated, tmp_path):
    with pytest.raises(SchemaError, match="its folder .* does not exist"):
        backup_database(populated, tmp_path / "missing" / "copy.db", actor="tester")
    assert not (tmp_path / "missing").exists()

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(SchemaError, match="does not exist"):
        backup_database(populated, not_a_folder / "copy.db", actor="tester")

    folder = tmp_path / "out"
    folder.mkdir()

    def interrupted(remaining, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backup_database(populated, folder / "copy.db", actor="tester", progress=interrupted, pages_per_step=4)
    assert _only(folder) == [], "no partial file is left behind either"

    long_name = folder / ("c" * 240 + ".db")  # a name the file system takes, but not its temporary one
    with pytest.raises(SchemaError, match=f"cannot write in {folder} .File name too long.; no backup was written"):
        backup_database(populated, long_name, actor="tester")
    assert _only(folder) == []
    with pytest.raises(SchemaError, match="cannot be used for a backup .File name too long."):
        backup_database(populated, folder / ("c" * 300), actor="tester")

    damaged = tmp_path / "damaged.db"
    backup_database(populated, damaged, actor="tester")
    _damage(damaged)
    with pytest.raises(SchemaError, match=f"failed its integrity check .*: {damaged} itself, or the disk "
                                         "written to, is damaged; no backup was written"):
        backup_database(damaged, folder / "copy.db", actor="tester")
    assert _only(folder) == []
    with opened(populated, create=False) as conn:
        assert [r["path"] for r in [last_backup(conn)]] == [str(damaged)], "failures are not recorded"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions")
def test_a_read_only_folder_is_refused_with_nothing_written(populated, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(SchemaError, match="cannot write in"):
            backup_database(populated, folder / "copy.db", actor="tester")
        assert _only(folder) == []
    finally:
        folder.chmod(0o755)


def test_last_backup_is_the_newest_and_audited_without_case_text(populated, tmp_path):
    with opened(populated, create=False) as conn:
        assert last_backup(conn) is None
    first = backup_database(populated, tmp_path / "first.db", actor="alice", client="cli")
    second = backup_database(populated, tmp_path, actor="bob")  # a folder: a file named by the time
    assert second.path.parent == tmp_path and second.path.name.startswith("reviews-")
    assert second.path.suffix == ".db" and verify_backup(second.path)["ok"]
    with opened(populated, create=False) as conn:
        newest = last_backup(conn)
        rows = conn.execute("SELECT detail FROM audit_log WHERE action = 'backup' AND entity = 'backups'").fetchall()
    assert newest["path"] == str(second.path) and newest["actor"] == "bob" and newest["client"] is None
    assert newest["bytes"] == second.bytes and newest["pages"] == second.pages and newest["at"].endswith("Z")
    assert len(rows) == 2 and "alice" not in rows[1][0] and str(first.path) in rows[0][0]
    assert not any("adenocarcinoma" in r[0] for r in rows)
    assert _counts(second.path)["audit_log"] == _counts(first.path)["audit_log"] + 1, \
        "each backup holds the audit rows of the backups before it"


def test_verify_reports_rows_and_detects_a_damaged_copy(populated, tmp_path):
    out = tmp_path / "copy.db"
    backup_database(populated, out, actor="tester")
    report = verify_backup(out)
    assert report["ok"] and report["schema_version"] == SCHEMA_VERSION
    assert {"cases", "ratings", "assignments", "generations", "audit_log", "reviewers"} <= set(report["tables"])
    assert report["tables"]["cases"] == 40 * CASES_PER_IMPORT
    line = describe_verification(report)
    assert line.startswith(f"{out}: restore check passed: integrity ok, schema version {SCHEMA_VERSION}")
    assert "cases 200" in line and "\n" not in line

    _damage(out)
    damaged = verify_backup(out)
    assert not damaged["ok"] and damaged["problems"]
    line = describe_verification(damaged)
    assert line.startswith(f"{out}: restore check FAILED: ") and "\n" not in line
    assert _only(tmp_path) == ["copy.db", "store"], "the check writes nothing beside the copy"

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    assert "not an SQLite database" in describe_verification(verify_backup(garbage))
    plain = tmp_path / "plain.db"
    with sqlite3.connect(plain) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert verify_backup(plain)["problems"] == ["no schema version: not a rocore database"]
    with pytest.raises(SchemaError, match="missing.db: no such file; nothing to check"):
        verify_backup(tmp_path / "missing.db")


def test_backup_and_verify_on_the_command_line(populated, tmp_path):
    out = tmp_path / "nightly.db"
    done = rocore("backup", "--db", populated, "--out", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()]
    assert done.stdout.startswith(f"backed up {populated} to {out}: ") and "integrity ok" in done.stdout
    assert "same disk" in done.stderr, "a copy beside the database is no protection against losing the disk"
    with opened(populated, create=False) as conn:
        assert last_backup(conn)["actor"].startswith("cli") and last_backup(conn)["client"] == "cli"

    again = rocore("backup", "--db", populated, "--out", out)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.splitlines() == [f"{out}: already exists; choose a new name, or pass --force to replace it"]
    assert rocore("backup", "--db", populated, "--out", out, "--force").returncode == 0

    checked = rocore("backup", "--verify", out)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{out}: restore check passed: integrity ok") and len(
        checked.stdout.splitlines()) == 1

    _damage(out)
    failed = rocore("backup", "--verify", out)
    assert failed.returncode == 1 and failed.stdout == ""
    assert len(failed.stderr.splitlines()) == 1 and failed.stderr.startswith(f"{out}: restore check FAILED: ")

    for args in (["--db", tmp_path / "typo.db", "--out", tmp_path / "x.db"], ["--verify", tmp_path / "x.db"],
                 ["--db", populated, "--out", tmp_path / "missing" / "x.db"]):
        refused = rocore("backup", *args)
        assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, (args, refused.stderr)
        assert "Traceback" not in refused.stderr
    assert not (tmp_path / "x.db").exists()
    assert rocore("backup", "--db", populated).returncode == 2, "--out or --verify is required"
    assert rocore("backup", "--out", out, "--verify", out).returncode == 2
    assert rocore("backup", "--verify", out, "--force").returncode == 2
