"""The Generate page through AppTest: it launches a real background process and follows it in the database."""

import shutil
import time

import pytest

from rocore.store import jobs
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
    job = at.session_state["generate-job"]
    assert f"Process {job['pid']} is still starting" in at.info[0].value
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
    while jobs.exit_code(job["pid"]) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    at.run()
    assert at.success[0].value == f"Process {job['pid']} is done: run 1 is finished."
    table = at.dataframe[0].value
    assert table.loc[0, "status"] == "finished" and table.loc[0, "adapter"] == "(base)"
    with opened(db_path) as conn:
        actors = {tuple(r) for r in conn.execute("SELECT actor, client FROM audit_log WHERE entity = 'generation_runs'")}
    # AppTest has no browser address (its st.context is a stand-in): the client is a web one, whatever its address.
    assert {(actor, client.split(" ")[0]) for actor, client in actors} == {("test-admin", "web")}, \
        "audited as the person who started it, from the page"


def test_a_request_the_checks_refuse_launches_nothing_and_says_what_to_change(page_for, split_db, tmp_path):
    db_path, _ = split_db
    with opened(db_path) as conn:
        register_model(conn, tmp_path / "moved-away", "base")
    at = page_for(db_path)
    at.multiselect[0].set_value([])
    at.run()
    at.button[0].click()
    at.run()
    assert at.error[0].value == ("Not started.\n\nTasks: choose at least one task\n\nBase model directory: model "
                                 f"directory {tmp_path / 'moved-away'} does not exist")
    assert "generate-job" not in at.session_state and not (db_path.parent / "logs").exists()


@pytest.mark.slow
def test_a_launched_process_that_fails_shows_its_exit_code_and_the_end_of_its_log(page_for, split_db, tmp_path,
                                                                                  tiny_model_dir):
    """A model folder whose config and tokenizer read fine but whose weights are cut short (an interrupted
    copy) passes the checks; only the launched process finds out, and the page shows it."""
    db_path, _ = split_db
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with opened(db_path) as conn:
        register_model(conn, broken, "base")
    at = page_for(db_path)
    next(box for box in at.selectbox if box.label == "Quantization").set_value("fp32")
    at.button[0].click()
    at.run()
    job = at.session_state["generate-job"]
    assert "is still starting" in at.info[0].value and not at.error
    deadline = time.monotonic() + 120
    while jobs.exit_code(job["pid"]) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    at.run()
    assert at.error[0].value == (f"The process ended with exit code 1 before starting a run. The end of its log "
                                 f"({job['log']}):")
    assert f"{broken} could not be loaded in fp32" in at.code[-1].value
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM generation_runs").fetchone()[0] == 0


def test_a_server_that_is_down_or_a_url_with_credentials_is_refused_on_the_page(page_for, split_db, tiny_model_dir):
    from conftest import free_port

    db_path, _ = split_db
    with opened(db_path) as conn:
        register_model(conn, tiny_model_dir, "base")
    at = page_for(db_path)
    at.radio[0].set_value("openai")
    at.run()
    assert not [b for b in at.selectbox if b.label in ("Quantization", "Device")]
    url = f"http://127.0.0.1:{free_port()}/v1"
    at.text_input[0].set_value("http://user:secret@127.0.0.1:8000/v1")
    at.text_input[1].set_value("base")
    at.button[0].click()
    at.run()
    assert at.error[0].value == ("Not started.\n\nServer: the server URL must not carry credentials or a query: give the API key "
                                 "in $ROCORE_OPENAI_API_KEY instead")
    at.text_input[0].set_value(url)
    at.button[0].click()
    at.run()
    assert at.error[0].value.startswith(f"Not started.\n\nServer: server {url} (model base): cannot connect")
    assert "generate-job" not in at.session_state


@pytest.mark.slow
def test_a_run_through_a_server_started_from_the_page(page_for, split_db, tiny_model_dir, served):
    db_path, _ = split_db
    with opened(db_path) as conn:
        register_model(conn, tiny_model_dir, "base")
    at = page_for(db_path)
    at.multiselect[0].set_value(["icd10"])
    at.radio[0].set_value("openai")
    at.run()
    at.text_input[0].set_value(served.url)
    at.text_input[1].set_value(str(tiny_model_dir))
    next(n for n in at.number_input if n.label.startswith("Outputs to try first")).set_value(6)
    at.run()
    assert (f"--backend openai --base-url {served.url} --served-model {tiny_model_dir} --concurrency 8 --limit 6"
            in at.code[0].value)
    at.button[0].click()
    at.run()
    job = at.session_state["generate-job"]
    deadline = time.monotonic() + 120
    while jobs.exit_code(job["pid"]) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    at.run()
    assert at.success[0].value == f"Process {job['pid']} is done: run 1 is queued."
    table = at.dataframe[0].value
    assert table.loc[0, "backend"] == f"{tiny_model_dir} at {served.url}" and table.loc[0, "outputs"].startswith("6 /")
