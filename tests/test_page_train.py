"""The Train page through AppTest against a real database; the launched process is real too."""

import subprocess
import time

import pytest

from rocore.store.db import opened
from rocore.store.registry import register_model
from rocore.training.runs import create_run, list_runs
from rocore.training.trainer import TrainingConfig

PAGE = "app_pages/train.py"


def recorded_run(db_path, model_dir, tmp_path, **columns) -> int:
    """A training run 1 with these columns set, as its process would have left them."""
    with opened(db_path) as conn:
        run_id = create_run(conn, model_dir, "main", TrainingConfig(quantization="fp32"), tmp_path / "runs")
        for name, value in columns.items():
            conn.execute(f"UPDATE training_runs SET {name} = ? WHERE run_id = ?", (value, run_id))
    return run_id


@pytest.fixture
def process():
    """A live process standing in for a run's training process."""
    stand_in = subprocess.Popen(["sleep", "120"])
    yield stand_in
    stand_in.kill()
    stand_in.wait()


def test_a_run_shows_its_log_while_starting_and_its_step_count_from_the_first_step(split_db, tiny_model_dir, tmp_path,
                                                                                  open_page, process):
    db_path, _ = split_db
    log = tmp_path / "train-run-1.log"
    log.write_text("training run 1: starting\n" + "".join(f"noise {i}\n" for i in range(50)) +
                   "06:00:20 loaded tiny-llama in fp32 on cpu\n")
    run_id = recorded_run(db_path, tiny_model_dir, tmp_path, status="running", pid=process.pid, log_path=str(log))
    at = open_page(PAGE, db_path)
    assert f"Process {process.pid} is loading the base model" in at.info[0].value
    tail = at.code[-1].value
    assert tail.endswith("loaded tiny-llama in fp32 on cpu") and "noise 31" in tail and "noise 30" not in tail, "the last 20 lines"
    assert not at.metric, "no step yet"

    with opened(db_path) as conn:  # what the process writes at the end of its first step
        conn.execute("UPDATE training_runs SET total_steps = 120 WHERE run_id = ?", (run_id,))
        conn.execute("INSERT INTO training_metrics (run_id, step, epoch, train_loss, eta_s) VALUES (?, 1, 0.03, 2.5, 95)",
                     (run_id,))
    log.write_text(log.read_text() + "06:00:24 step 1 of 120, epoch 0.03, about 1.6 min left\n")
    at.run()
    assert not at.exception
    assert (at.metric[0].label, at.metric[0].value) == ("Step", "1 of 120")
    assert at.progress[0].text.startswith("Step 1 of 120 · epoch 0.03 of 3, about 1 min 35 s left")
    assert at.code[-1].value.endswith("step 1 of 120, epoch 0.03, about 1.6 min left")


def test_a_cancelled_run_is_cancelling_until_its_process_has_exited(split_db, tiny_model_dir, tmp_path, open_page,
                                                                    process):
    db_path, _ = split_db
    run_id = recorded_run(db_path, tiny_model_dir, tmp_path, status="running", pid=process.pid)
    at = open_page(PAGE, db_path)
    at.button(key=f"cancel-{run_id}").click()
    at.run()
    assert not at.exception
    assert f"Cancelling: process {process.pid} stops at its next step" in at.warning[0].value
    assert any("**cancelling**" in m.value for m in at.markdown)
    assert at.button(key=f"resume-{run_id}").disabled, "no resume while the process lives"
    assert not [b for b in at.button if b.key == f"cancel-{run_id}"]
    process.kill()
    process.wait()
    at.run()
    assert any("**cancelled**" in m.value for m in at.markdown) and not at.warning
    assert not at.button(key=f"resume-{run_id}").disabled
    with opened(db_path) as conn:
        trail = [tuple(r) for r in conn.execute("SELECT actor, action, client FROM audit_log "
                                                "WHERE entity = 'training_runs' ORDER BY audit_id")]
    assert [(actor, action) for actor, action, _ in trail] == [
        ("cli", "create-training-run"), ("test-admin", "cancel-training-run"), ("system", "mark-cancelled")]
    assert trail[1][2].startswith("web "), "the browser's cancel, from the browser"


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
    assert at.metric[0].label == "Step" and int(at.metric[0].value.split()[0]) >= 1, \
        "live figures appear once metrics arrive"
    assert at.get("vega_lite_chart"), "the loss chart appears once metrics arrive"
    assert "step 1 of" in at.code[-1].value, "the log's last lines"
    at.button(key="cancel-1").click()
    at.run()
    assert any("**cancelling**" in m.value for m in at.markdown)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with opened(db_path) as conn:
            run = next(r for r in list_runs(conn) if r["run_id"] == 1)
        if run["status"] == "cancelled":
            break
        time.sleep(1)
    assert (run["status"], run["pid"], run["adapter_path"]) == ("cancelled", None, None)


def test_a_run_shows_how_many_processes_train_it(split_db, tiny_model_dir, tmp_path, open_page):
    db_path, _ = split_db
    queued = recorded_run(db_path, tiny_model_dir, tmp_path)
    older = recorded_run(db_path, tiny_model_dir, tmp_path, status="failed", started_at="2025-01-01T09:00:00Z")
    data_parallel = recorded_run(db_path, tiny_model_dir, tmp_path, status="cancelled", processes=2,
                                 started_at="2025-01-01T10:00:00Z")
    at = open_page(PAGE, db_path)
    assert at.selectbox(key="train-run").value == data_parallel
    assert any("**cancelled**" in m.value and m.value.endswith(" · 2 training processes") for m in at.markdown)
    assert any(c.value.startswith("Trained by 2 processes; Resume here goes on in one.") and
               f"`torchrun --nproc_per_node 2 -m train --resume {data_parallel} --db {db_path}`" in c.value
               for c in at.caption)
    at.selectbox(key="train-run").set_value(older).run()
    assert any(m.value.endswith(" · 1 training process") for m in at.markdown), "NULL: before schema 4, one process"
    assert not any("Trained by" in c.value for c in at.caption)
    at.selectbox(key="train-run").set_value(queued).run()
    assert not any("training process" in m.value for m in at.markdown), "unknown until the run starts"
