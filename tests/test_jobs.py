"""Background jobs: the dead-process sweep the Generate and Train pages run every few seconds."""

import sqlite3

from rocore.store.db import opened
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
