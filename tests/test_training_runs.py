"""Training runs recorded in the database: progress, cancel, resume, a killed process, config errors."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import ROOT
from rocore.store.db import opened
from rocore.store.jobs import RunBusy
from rocore.training.trainer import TrainingConfig
from rocore.training.runs import (
    TrainingConfigError,
    _progress_callback,
    config_from_dict,
    create_run,
    list_runs,
    request_cancel,
    run_metrics,
    run_training,
)

FAST = {"quantization": "fp32", "epochs": 1.0, "batch_size": 16, "learning_rate": 5e-3, "logging_steps": 3,
        "eval_steps": 10, "lora_r": 4, "lora_alpha": 8}


def new_run(db_path, model_dir, tmp_path, **overrides) -> int:
    with opened(db_path) as conn:
        return create_run(conn, model_dir, "main", config_from_dict({**FAST, **overrides}), tmp_path / "runs")


def status(db_path, run_id) -> dict:
    with opened(db_path) as conn:
        return dict(conn.execute("SELECT * FROM training_runs WHERE run_id = ?", (run_id,)).fetchone())


@pytest.mark.slow
def test_a_run_records_its_progress_data_and_adapter(split_db, tiny_model_dir, tmp_path):
    db_path, split_id = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path)
    assert status(db_path, run_id)["status"] == "queued"
    assert run_training(db_path, run_id) == "finished"
    run = status(db_path, run_id)
    assert run["status"] == "finished" and run["pid"] is None and run["split_id"] == split_id
    assert json.loads(run["config"])["lora_r"] == 4
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= set(json.loads(run["versions"]))
    with opened(db_path) as conn:
        metrics = run_metrics(conn, run_id)
        adapter = conn.execute("SELECT * FROM models WHERE model_id = ?", (run["adapter_model_id"],)).fetchone()
    train_losses = [m["train_loss"] for m in metrics if m["train_loss"] is not None]
    eval_losses = [m["eval_loss"] for m in metrics if m["eval_loss"] is not None]
    assert train_losses[-1] < train_losses[0] and len(eval_losses) >= 2
    assert all(m["tokens_per_s"] > 0 and m["eta_s"] is not None for m in metrics)
    info = json.loads((tmp_path / "runs" / f"run-{run_id}" / "adapter" / "rocore_adapter.json").read_text())
    assert info["training_run"] == run_id and info["split_id"] == split_id
    assert adapter["kind"] == "adapter" and adapter["path"].endswith("adapter")


@pytest.mark.slow
def test_cancel_stops_with_a_checkpoint_and_resume_finishes(split_db, tiny_model_dir, tmp_path):
    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path, epochs=4.0)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(status=run_training(db_path, run_id)))
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with opened(db_path) as conn:
            if any(m["eval_loss"] is not None for m in run_metrics(conn, run_id)):
                request_cancel(conn, run_id)
                break
        time.sleep(0.2)
    worker.join(timeout=120)
    assert outcome["status"] == "cancelled" and status(db_path, run_id)["status"] == "cancelled"
    assert list((tmp_path / "runs" / f"run-{run_id}" / "checkpoints").glob("checkpoint-*"))
    with opened(db_path) as conn:
        steps_before = max(m["step"] for m in run_metrics(conn, run_id))
    assert run_training(db_path, run_id, resume=True) == "finished"
    with opened(db_path) as conn:
        assert max(m["step"] for m in run_metrics(conn, run_id)) > steps_before


def test_a_run_cancelled_before_its_process_started_does_not_train(split_db, tiny_model_dir, tmp_path):
    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path)
    with opened(db_path) as conn:
        request_cancel(conn, run_id)  # Cancel pressed while the launched process was still importing torch
    assert run_training(db_path, run_id) == "cancelled"
    run = status(db_path, run_id)
    assert run["status"] == "cancelled" and run["started_at"] is None
    with opened(db_path) as conn:
        assert run_metrics(conn, run_id) == []
    assert not (tmp_path / "runs" / f"run-{run_id}" / "checkpoints").exists()


def test_a_run_another_live_process_is_training_is_refused(split_db, tiny_model_dir, tmp_path):
    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path)
    other = subprocess.Popen(["sleep", "60"])
    try:
        with opened(db_path) as conn:
            conn.execute("UPDATE training_runs SET status = 'running', pid = ? WHERE run_id = ?", (other.pid, run_id))
        with pytest.raises(RunBusy, match=f"run {run_id} is already running"):
            run_training(db_path, run_id)
        assert (status(db_path, run_id)["status"], status(db_path, run_id)["pid"]) == ("running", other.pid)
    finally:
        other.kill()
        other.wait()


def test_speed_and_eta_after_a_resume_count_only_the_new_process_steps(split_db, tiny_model_dir, tmp_path):
    from transformers import TrainerControl, TrainerState

    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path)
    progress = _progress_callback(db_path, run_id)
    # As restored from a checkpoint: 100 of 200 steps and a million tokens done by the earlier process.
    state = TrainerState(global_step=100, max_steps=200, epoch=0.5, num_input_tokens_seen=1_000_000)
    progress.on_step_begin(None, state, TrainerControl())
    time.sleep(0.2)
    state.global_step, state.num_input_tokens_seen = 110, 1_001_000
    progress.on_log(None, state, TrainerControl(), logs={"loss": 1.0})
    with opened(db_path) as conn:
        row = run_metrics(conn, run_id)[-1]
    assert row["step"] == 110
    assert 0 < row["tokens_per_s"] <= 1_000 / 0.2  # 1,000 new tokens in at least 0.2 s
    assert row["eta_s"] >= 0.2 / 10 * 90  # 10 steps took at least 0.2 s; 90 remain


@pytest.mark.slow
def test_a_killed_training_process_is_detected_as_failed(split_db, tiny_model_dir, tmp_path):
    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path, epochs=50.0)
    process = subprocess.Popen([sys.executable, "-m", "train", "--db", str(db_path), "--run", str(run_id)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and status(db_path, run_id)["status"] != "running":
        time.sleep(0.2)
    assert status(db_path, run_id)["pid"] == process.pid
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with opened(db_path) as conn:
        (run,) = [r for r in list_runs(conn) if r["run_id"] == run_id]
    assert run["status"] == "failed" and f"python -m train --resume {run_id}" in run["error"]


def test_config_errors_are_listed_together(split_db, tmp_path, tiny_model_dir):
    db_path, _ = split_db
    with opened(db_path) as conn:
        with pytest.raises(TrainingConfigError) as info:
            create_run(conn, tmp_path / "missing-model", "nope",
                       TrainingConfig(learning_rate=-1, lora_r=0, tasks=["dose"], quantization="int3"), tmp_path)
    message = str(info.value)
    for expected in ("learning_rate: -1 must be a number above 0", "lora_r: 0 must be a whole number of at least 1",
                     "tasks: unknown task 'dose'", "quantization: 'int3' is not one of",
                     "base_model: model directory", "split: no split named 'nope'"):
        assert expected in message
    with pytest.raises(TrainingConfigError, match="unknown setting 'lora_rank'"):
        config_from_dict({"lora_rank": 8})
    assert config_from_dict({"learning_rate": "1e-4", "tasks": "icd10,regimen"}).learning_rate == 1e-4


def test_train_cli_refuses_bad_config_files(split_db, tmp_path, tiny_model_dir):
    db_path, _ = split_db
    config = tmp_path / "train.yaml"
    config.write_text(f"base_model: {tiny_model_dir}\nlearning_rate: 0.5\nepochs: 0\n")
    done = subprocess.run([sys.executable, "-m", "train", str(config), "--db", str(db_path), "--set", "lora_r=-2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "learning_rate: 0.5 is above 0.01" in done.stderr and "epochs: 0 must be a number above 0" in done.stderr
    assert "lora_r: -2 must be a whole number" in done.stderr
    config.write_text("base_model: [unclosed\n")
    bad_yaml = subprocess.run([sys.executable, "-m", "train", str(config), "--db", str(db_path)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert bad_yaml.returncode == 1 and "is not valid YAML" in bad_yaml.stderr
