"""The Generate page through AppTest: it launches a real background process and follows it in the database."""

import time

import pytest

from rocore.store.db import opened
from rocore.store.registry import register_model


@pytest.fixture
def page_for(open_page):
    return lambda db_path: open_page("app_pages/generate.py", db_path)


def test_without_a_split_the_page_says_what_to_do_first(page_for, db_path):
    assert "Create a split on the Data page first" in page_for(db_path).info[0].value


@pytest.mark.slow
def test_start_a_run_in_the_background_and_watch_it_finish(page_for, split_db, tiny_model_dir):
    db_path, _ = split_db
    with opened(db_path) as conn:
        register_model(conn, tiny_model_dir, "base")
    at = page_for(db_path)
    at.multiselect[0].set_value(["modality"])
    at.run()
    command = at.code[0].value
    assert command.startswith("python -m rocore generate --db") and "--tasks modality" in command
    assert "--limit" not in command
    next(n for n in at.number_input if n.label.startswith("Outputs to try first")).set_value(5)
    at.run()
    assert at.code[0].value.endswith("--limit 5")
    next(n for n in at.number_input if n.label.startswith("Outputs to try first")).set_value(0)
    at.run()
    at.button[0].click()
    at.run()
    assert "Started (process" in at.success[0].value
    deadline = time.monotonic() + 120
    status = None
    while time.monotonic() < deadline:
        with opened(db_path) as conn:
            row = conn.execute("SELECT status FROM generation_runs").fetchone()
        status = row and row[0]
        if status in ("finished", "failed"):
            break
        time.sleep(1)
    assert status == "finished"
    at.run()
    table = at.dataframe[0].value
    assert table.loc[0, "status"] == "finished" and table.loc[0, "adapter"] == "(base)"
