"""A store that cannot be used says so: one line naming the file and what to do, from the command line
(exit status 1, no traceback) and from the app (an error box, no sign-in form), and nothing half-written.

The faults are made for real: a read-only file or folder (file modes; for root, whom modes do not stop,
`chattr +i`, else a read-only bind mount), damaged pages, files that are not SQLite, a schema from a
newer rocore, a file size limit that makes writes fail (RLIMIT_FSIZE, as a full disk or a quota would),
and a folder that does not exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest
from test_app import sign_in
from test_review_studies import good_rating, make_review_db

from rocore.data.synthetic import generate_cases, write_jsonl
from rocore.review import studies as review
from rocore.store.db import SCHEMA_VERSION, opened

pytestmark = pytest.mark.fault

TABLES = ("cases", "reviewers", "splits", "studies", "ratings", "audit_log", "schema_migrations")
# Garbage that cannot pass for a b-tree page: its first byte is no page type SQLite knows.
GARBAGE = b"not a b-tree page; "


# --- The store and the ways it breaks ----------------------------------------------------------------

@pytest.fixture(scope="session")
def template(tmp_path_factory) -> tuple[Path, dict]:
    """A small real store, made once: cases, a split, an admin ('boss'), reviewers and a study."""
    path = tmp_path_factory.mktemp("template") / "reviews.db"
    info = make_review_db(path, n_cases=6, reviewers=("ada",), overlap=1)
    assert not Path(f"{path}-wal").exists(), "the last connection checkpointed and removed its WAL"
    return path, info


@pytest.fixture
def store(template, tmp_path) -> Path:
    path = tmp_path / "store" / "reviews.db"
    path.parent.mkdir()
    shutil.copyfile(template[0], path)
    return path


@pytest.fixture(scope="session")
def new_cases(tmp_path_factory) -> Path:
    """Cases the store does not hold yet (the store's are P000...)."""
    path = tmp_path_factory.mktemp("cases") / "new.jsonl"
    write_jsonl(generate_cases(10, seed=3), path)
    return path


def _attempt(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0
    except OSError:  # no such program here
        return False


@contextlib.contextmanager
def read_only(target: Path) -> Iterator[None]:
    """`target` (a file or a folder) really read-only for this process and the ones it starts.

    File modes stop anyone but root. Root (or a process with CAP_DAC_OVERRIDE) writes through them, so
    then the target is made immutable (`chattr +i`: ext2/3/4, XFS, Btrfs), or else bind-mounted read-only
    on itself. Skipped, saying why, only if none of these works here.
    """
    mode = target.stat().st_mode & 0o7777
    target.chmod(0o555 if target.is_dir() else 0o444)
    undo: Callable[[], object] | None = None
    try:
        if os.access(target, os.W_OK):
            if _attempt(["chattr", "+i", str(target)]):
                undo = lambda: subprocess.run(["chattr", "-i", str(target)], check=True)
            elif _attempt(["mount", "--bind", str(target), str(target)]):
                undo = lambda: subprocess.run(["umount", str(target)], check=True)
                if not _attempt(["mount", "-o", "remount,bind,ro", str(target)]):
                    pytest.skip(f"cannot make {target} read-only: this user writes through file modes, and "
                                "neither 'chattr +i' nor a read-only bind mount is permitted here")
            else:
                pytest.skip(f"cannot make {target} read-only: this user writes through file modes, and neither "
                            "'chattr +i' nor a read-only bind mount is permitted here")
        assert not os.access(target, os.W_OK)
        yield
    finally:
        if undo is not None:
            undo()
        target.chmod(mode)


def _overwrite_pages(path: Path, pages: list[int]) -> None:
    with sqlite3.connect(path) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    garbage = (GARBAGE * (size // len(GARBAGE) + 1))[:size]
    with open(path, "r+b") as f:
        for page in pages:
            f.seek((page - 1) * size)
            f.write(garbage)


def _damaged_schema(path: Path) -> None:
    """Every page but the first (the file header and the table list) overwritten: the store's own
    tables are unreadable from the first statement on."""
    with sqlite3.connect(path) as conn:
        n = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    _overwrite_pages(path, list(range(2, n + 1)))


def _damaged_tables(path: Path) -> None:
    """The root pages of the tables the commands and the app read, and of their indexes, overwritten:
    the store opens (its schema and version are intact) and fails only when a command reads them."""
    with sqlite3.connect(path) as conn:
        roots = [r[0] for r in conn.execute("SELECT rootpage FROM sqlite_master WHERE rootpage > 0 AND tbl_name "
                                            "IN ('cases', 'splits', 'reviewers', 'studies')")]
    conn.close()
    _overwrite_pages(path, roots)


def _text_file(path: Path) -> None:
    path.write_text("case_id,diagnosis\nP1,not a database but a CSV file\n", encoding="utf-8")


def _zero_filled(path: Path) -> None:
    path.write_bytes(bytes(64 * 1024))


def _newer_schema(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations (version, description) VALUES (?, 'from a newer rocore')",
                     (SCHEMA_VERSION + 1,))
    conn.close()


@contextlib.contextmanager
def broken(kind: str, store: Path) -> Iterator[Path]:
    """The store with the fault `kind`; yields the path to name (--db, $ROCORE_DB)."""
    if kind == "read-only file":
        with read_only(store):
            yield store
    elif kind == "read-only folder":
        with read_only(store.parent):
            yield store
    elif kind == "missing folder":
        yield store.parent / "no" / "such" / "folder" / "reviews.db"
    else:
        {"damaged schema": _damaged_schema, "damaged tables": _damaged_tables, "text file": _text_file,
         "zero-filled file": _zero_filled, "newer schema": _newer_schema}[kind](store)
        yield store


# What the one line must say, besides the file: the cause and what to do about it.
SAYS = {
    "read-only file": "is read-only for this user or on a read-only disk (rocore writes the file and its -wal and "
                      "-shm files beside it); make both writable for this user",
    "read-only folder": "is read-only for this user or on a read-only disk (rocore writes the file and its -wal and "
                        "-shm files beside it); make both writable for this user",
    "damaged schema": "the database file is damaged; restore it from a backup",
    "damaged tables": "the database file is damaged; restore it from a backup",
    "text file": "the file is not an SQLite database (is --db or $ROCORE_DB the right file?); point them at the "
                 "rocore database, or restore this one from a backup",
    "zero-filled file": "the file is not an SQLite database (is --db or $ROCORE_DB the right file?); point them at "
                        "the rocore database, or restore this one from a backup",
    "newer schema": f"this database has schema version {SCHEMA_VERSION + 1}, but this rocore knows only up to "
                    f"{SCHEMA_VERSION}: update rocore before opening it",
    "missing folder": "no database here. Create an empty one with 'python -m rocore init --db",
}
FAULTS = list(SAYS)


def snapshot(path: Path) -> dict:
    """What must not change: integrity and rows per table where the file is a readable database, else
    its bytes (or its absence)."""
    if not path.exists():
        return {"exists": False, "folder exists": path.parent.exists()}
    try:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return {"integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
                    **{t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}}
    except sqlite3.DatabaseError:
        return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def assert_unchanged(path: Path, before: dict) -> None:
    after = snapshot(path)
    assert after == before
    if "integrity" in after:
        assert after["integrity"] == "ok"


def assert_one_line(message: str, path: Path, says: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    assert message.startswith(f"{path}: "), message
    assert says in message, message


# --- The command line ------------------------------------------------------------------------------

def rocore(*args, preexec_fn=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rocore", *map(str, args)], check=False,
                          capture_output=True, text=True, cwd=ROOT, timeout=120, preexec_fn=preexec_fn)


COMMANDS = {
    "split list": ("split", "list"),  # reads
    "reviewer add": ("reviewer", "add", "newcomer"),  # writes a row and its audit entry
    "import": ("import", "{cases}"),  # writes many rows in one transaction
}


def command(name: str, new_cases: Path) -> list[str]:
    return [str(new_cases) if arg == "{cases}" else arg for arg in COMMANDS[name]]


# Every fault with every command, but two that are no fault: a read-only store can be read
# (test_a_read_only_store_can_still_be_read), and import makes the store it imports into, folders
# included, and says so (test_cli).
CASES = [(kind, name) for kind in FAULTS for name in COMMANDS
         if (kind, name) not in {("read-only file", "split list"), ("missing folder", "import")}]


@pytest.mark.parametrize("kind, name", CASES)
def test_the_command_line_names_the_file_and_the_remedy_and_changes_nothing(kind, name, store, new_cases):
    before = snapshot(store) if kind.startswith("read-only") else None  # unreadable once made so
    with broken(kind, store) as path:
        before = before or snapshot(path)
        done = rocore(*command(name, new_cases), "--db", path)
    assert done.returncode == 1, done.stderr
    assert_one_line(done.stderr, path, SAYS[kind])
    assert_unchanged(path, before)


def test_a_read_only_store_can_still_be_read(store):
    with read_only(store):
        listed = rocore("reviewer", "list", "--db", store)
        split = rocore("split", "list", "--db", store)
    assert listed.returncode == 0 and "boss" in listed.stdout and "ada" in listed.stdout, listed.stderr
    assert split.returncode == 0 and "main" in split.stdout, split.stderr


def _file_size_limit(limit: int) -> Callable[[], None]:
    """For preexec_fn: the child may write no file past `limit` bytes; a write that would gets EFBIG
    (SIGXFSZ, which would kill it, is ignored), as on a full disk or over a quota."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_an_import_that_runs_out_of_disk_changes_nothing(store, tmp_path):
    """3000 cases take far more than the 256 KiB the WAL may grow to: the write fails half-way through
    the import, which is one transaction, so not one of its cases is kept."""
    cases = tmp_path / "many.jsonl"
    write_jsonl(generate_cases(3000, seed=4), cases)
    before = snapshot(store)
    assert store.stat().st_size < 256 * 1024
    done = rocore("import", cases, "--db", store, preexec_fn=_file_size_limit(256 * 1024))
    assert done.returncode == 1, done.stdout
    assert_one_line(done.stderr, store, "the database could not be written: the system refused the write")
    assert "make room or lift the limit" in done.stderr
    assert_unchanged(store, before)
    again = rocore("import", cases, "--db", store)  # no limit: the same file imports whole
    assert again.returncode == 0, again.stderr
    assert snapshot(store)["cases"] == before["cases"] + 3000


# --- The app ---------------------------------------------------------------------------------------

@pytest.fixture
def app(monkeypatch):
    monkeypatch.chdir(ROOT)

    def start(path: Path) -> AppTest:
        monkeypatch.setenv("ROCORE_DB", str(path))
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        at.run()
        assert not at.exception
        return at
    return start


@pytest.mark.parametrize("kind", [k for k in FAULTS if k != "read-only file"])
def test_the_app_names_the_file_and_the_remedy_instead_of_the_sign_in_form(kind, store, app):
    before = snapshot(store) if kind.startswith("read-only") else None
    with broken(kind, store) as path:
        before = before or snapshot(path)
        at = app(path)
    assert not at.text_input and not at.title, "no sign-in form on a store that cannot be used"
    assert [e.value for e in at.error] and len(at.error) == 1
    assert_one_line(at.error[0].value, path, SAYS[kind])
    assert_unchanged(path, before)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """This process may write no file past `limit` bytes while inside (see `_file_size_limit`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def full(store: Path) -> Iterator[None]:
    """The store's disk full for its next write. A connection held open keeps the -wal and -shm files
    in place, as a running app does, so that the limit stops only the WAL from growing."""
    with contextlib.closing(sqlite3.connect(store)) as holder:
        holder.execute("SELECT count(*) FROM sqlite_master").fetchone()
        assert Path(f"{store}-wal").stat().st_size == 0
        with file_size_limit(1024):
            yield


@pytest.mark.parametrize("fault", ["read-only file", "full disk"])
def test_the_app_refuses_a_sign_in_it_cannot_record_and_says_why(fault, store, app, template):
    at = app(store)
    assert at.text_input, "the store can be read: the sign-in form is shown"
    before = snapshot(store)
    with read_only(store) if fault == "read-only file" else full(store):
        sign_in(at, "boss", template[1]["codes"]["boss"])
    assert "user" not in at.session_state
    says = SAYS["read-only file"] if fault == "read-only file" else "the system refused the write"
    assert_one_line(at.error[0].value, store, says)
    assert_unchanged(store, before)


# --- A reviewer's rating ---------------------------------------------------------------------------

NOT_SAVED = {
    "read-only file": "Your rating was not saved: the database is read-only for the app (its file, folder or disk "
                      "does not allow writing). Your answers are still on the form: submit again once a study "
                      "administrator has fixed this.",
    # SQLite cannot open the file at all, without its -wal and -shm beside it: read-only all the same.
    "read-only folder": "Your rating was not saved: the database is read-only for the app (its file, folder or "
                        "disk does not allow writing). Your answers are still on the form: submit again once a "
                        "study administrator has fixed this.",
    "full disk": "Your rating was not saved: the disk that holds the database could not be written. Your answers "
                 "are still on the form: submit again once a study administrator has fixed this.",
}


@pytest.mark.parametrize("fault", list(NOT_SAVED))
def test_a_rating_the_store_cannot_take_is_not_saved_and_says_why(fault, store, template):
    ada = template[1]["ids"]["ada"]
    with opened(store) as conn:
        item = review.open_item(conn, ada, template[1]["study_id"])
    before = snapshot(store)
    making = {"read-only file": lambda: read_only(store), "read-only folder": lambda: read_only(store.parent),
              "full disk": lambda: full(store)}[fault]
    with making(), pytest.raises(review.NotSaved) as refused:
        review.save_rating(store, ada, item.assignment_id, good_rating(), 0)
    assert str(refused.value) == NOT_SAVED[fault]
    assert_unchanged(store, before)
    saved = review.save_rating(store, ada, item.assignment_id, good_rating(), 0)
    assert (saved.revision, saved.duplicate) == (1, False), "once fixed, the same form saves"
