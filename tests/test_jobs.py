"""Background jobs: the dead-process sweep the Generate and Train pages run every few seconds."""

import sqlite3
import time

from rocore.store.db import opened
from rocore.store import jobs
from rocore.store.jobs import mark_dead_runs


def test_a_sweep_with_no_dead_run_needs_no_write_lock(db_path):
    with opened(db_path) as writer, opened(db_path) as sweeper:
        sweeper.execute("PRAGMA busy_timeout = 50")
        writer.execute("BEGIN IMMEDIATE")  # a reviewer's rating being written at that moment
        try:
            assert mark_dead_runs(sweeper, "training_runs", lambda run_id: "died") == 0
        except sqlite3.OperationalError as exc:
            raise AssertionError(f"the sweep waited for the write lock: {exc}") from None
        finally:
            writer.execute("ROLLBACK")


def test_a_launched_job_reports_its_exit_and_the_end_of_its_log(tmp_path):
    job = jobs.launch("rocore", ["generate", "--db", str(tmp_path / "missing.db"), "--model", "x",
                                 "--split", "test"], tmp_path / "logs")
    deadline = time.monotonic() + 60
    while jobs.exit_code(job.pid) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jobs.exit_code(job.pid) not in (None, 0)
    assert not jobs.pid_alive(job.pid)
    assert "missing.db" in jobs.log_tail(job.log_path)
    assert jobs.exit_code(12345678) is None, "a process this app did not launch has no known exit"


def test_log_tail_reads_only_the_end_and_shows_a_progress_bar_as_its_latest_state(tmp_path):
    log = tmp_path / "job.log"
    log.write_bytes(b"old line\n" * 100_000 + b"step 1/9\rstep 2/9\rstep 3/9\nlast line\n")
    assert jobs.log_tail(log, lines=2) == "step 3/9\nlast line"
    assert jobs.log_tail(log, lines=10**6).count("\n") < 10_000, "reads a bounded tail of a long log"
    assert jobs.log_tail(tmp_path / "none.log") == ""
