"""The Train page through AppTest against a real database; the launched process is real too."""

import time

import pytest

from rocore.store.db import opened
from rocore.store.registry import register_model

PAGE = "app_pages/train.py"


def test_invalid_settings_are_refused_before_launch(split_db, tmp_path, open_page):
    db_path, _ = split_db
    with opened(db_path) as conn:
        register_model(conn, tmp_path / "moved-away", "base")
    at = open_page(PAGE, db_path)
    at.button[0].click()
    at.run()
    assert "base_model: model directory" in at.error[0].value and "does not exist" in at.error[0].value
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM training_runs").fetchone()[0] == 0


def test_command_line_equivalent_follows_the_form(split_db, tiny_model_dir, open_page):
    db_path, _ = split_db
    with opened(db_path) as conn:
        register_model(conn, tiny_model_dir, "base")
    at = open_page(PAGE, db_path)
    at.number_input[0].set_value(8)
    next(n for n in at.number_input if n.label.startswith("Validation examples")).set_value(500)
    at.run()
    command = at.code[0].value
    assert command.startswith("python -m train --db") and "--set lora_r=8" in command
    assert "--set eval_max_examples=500" in command
    assert str(tiny_model_dir) in command


@pytest.mark.slow
def test_launch_watch_and_cancel_a_run(split_db, tiny_model_dir, open_page):
    db_path, _ = split_db
    with opened(db_path) as conn:
        register_model(conn, tiny_model_dir, "base")
    at = open_page(PAGE, db_path)
    at.selectbox[3].set_value("fp32")
    at.number_input[4].set_value(30.0)
    at.button[0].click()
    at.run()
    assert "Started training run 1" in at.success[0].value
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with opened(db_path) as conn:
            steps = conn.execute("SELECT count(*) FROM training_metrics WHERE run_id = 1").fetchone()[0]
        if steps >= 2:
            break
        time.sleep(1)
    at.run()
    assert not at.exception
    assert at.metric[0].label == "Step" and int(at.metric[0].value) >= 1, "live figures appear once metrics arrive"
    assert at.get("vega_lite_chart"), "the loss chart appears once metrics arrive"
    at.button(key="cancel-1").click()
    at.run()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with opened(db_path) as conn:
            run = conn.execute("SELECT status, pid FROM training_runs WHERE run_id = 1").fetchone()
        if run["status"] == "cancelled" and run["pid"] is None:
            break
        time.sleep(1)
    assert (run["status"], run["pid"]) == ("cancelled", None)
