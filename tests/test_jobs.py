"""Background jobs: the dead-process sweep the Generate and Train pages run every few seconds."""

import os
import sqlite3
import subprocess
import time

import pytest

from rocore.store.db import opened
from rocore.store import jobs
from rocore.store.jobs import RunBusy, mark_dead_runs, refuse_if_running_elsewhere


def training_runs(conn, *held: tuple[str, int | None]) -> None:
    """Training runs 1, 2, ... with these (status, pid), on a stand-in base model and split."""
    conn.execute("INSERT INTO models (name, kind, path) VALUES ('base', 'base', '/models/base')")
    conn.execute("INSERT INTO splits (name, seed, fractions, strata, n_cases) VALUES ('main', 0, '{}', 'modality', 0)")
    conn.executemany("INSERT INTO training_runs (base_model_id, split_id, config, output_dir, status, pid) "
                     "VALUES (1, 1, '{}', '/runs', ?, ?)", held)


def ended_process(tmp_path) -> int:
    """The id of a process this test launched and that has exited (with status 2)."""
    job = jobs.launch("json.tool", [str(tmp_path / "missing.json")], tmp_path / "logs", name="json-tool")
    deadline = time.monotonic() + 60
    while jobs.exit_code(job.pid) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return job.pid


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


def test_the_sweep_ends_runs_whose_process_died_and_audits_each(db_path, tmp_path):
    dead = ended_process(tmp_path)
    live = subprocess.Popen(["sleep", "60"])
    try:
        with opened(db_path) as conn:
            training_runs(conn, ("running", dead), ("cancelling", dead), ("queued", dead), ("queued", None),
                          ("running", live.pid), ("cancelling", live.pid))
            assert mark_dead_runs(conn, "training_runs", lambda run_id: f"run {run_id} died") == 3
            runs = [tuple(r) for r in conn.execute("SELECT status, pid, error FROM training_runs ORDER BY run_id")]
            trail = [tuple(r) for r in conn.execute("SELECT actor, action, entity, entity_id FROM audit_log")]
    finally:
        live.kill()
        live.wait()
    assert runs == [("failed", None, "run 1 died (exit status 2)"), ("cancelled", None, None),
                    ("failed", None, "run 3 died (exit status 2)"), ("queued", None, None),
                    ("running", live.pid, None), ("cancelling", live.pid, None)]
    assert trail == [("system", "mark-failed", "training_runs", "1"), ("system", "mark-cancelled", "training_runs", "2"),
                     ("system", "mark-failed", "training_runs", "3")]


def test_the_sweep_leaves_a_run_that_a_new_process_took_meanwhile(db_path, tmp_path, monkeypatch):
    dead = ended_process(tmp_path)
    with opened(db_path) as conn:
        training_runs(conn, ("cancelling", dead))
    seen_dead = jobs.pid_alive

    def resumed_meanwhile(pid):
        with opened(db_path) as other:  # a resume claims the run between the sweep's look and its write
            other.execute("UPDATE training_runs SET status = 'running', pid = ? WHERE run_id = 1", (os.getpid(),))
        return seen_dead(pid)

    monkeypatch.setattr(jobs, "pid_alive", resumed_meanwhile)
    with opened(db_path) as conn:
        mark_dead_runs(conn, "training_runs", lambda run_id: "died")
        assert tuple(conn.execute("SELECT status, pid FROM training_runs").fetchone()) == ("running", os.getpid())
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone()[0] == 0


@pytest.mark.parametrize("status, reason", [
    ("running", "is already running (process {pid}); wait for it or cancel it"),
    ("queued", "is starting (process {pid}); wait for it or cancel it"),
    ("cancelling", "is still stopping after a cancel (process {pid}); resume it once that process has exited"),
    ("failed", "is held by process {pid}"),
])
def test_a_run_held_by_another_live_process_is_refused_saying_why(db_path, tmp_path, status, reason):
    live = subprocess.Popen(["sleep", "60"])
    try:
        with opened(db_path) as conn:
            training_runs(conn, (status, live.pid), (status, ended_process(tmp_path)), (status, os.getpid()))
            with pytest.raises(RunBusy) as refused:
                refuse_if_running_elsewhere(conn, "training_runs", 1)
            assert str(refused.value) == "run 1 " + reason.format(pid=live.pid)
            refuse_if_running_elsewhere(conn, "training_runs", 2)  # its process has exited
            refuse_if_running_elsewhere(conn, "training_runs", 3)  # this process holds it
    finally:
        live.kill()
        live.wait()
