"""Training runs recorded in the database: progress, cancel, resume, a killed process, config errors.

A run is held by one live process: the cancel and resume tests run real `python -m train` processes."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, free_port, store_intact
from rocore.store import db, jobs
from rocore.store.db import opened
from rocore.store.jobs import RunBusy
from rocore.training.trainer import TrainingCancelled, TrainingConfig
from rocore.training.runs import (
    RunTakenOver,
    TrainingConfigError,
    _progress_callback,
    config_from_dict,
    create_run,
    list_runs,
    request_cancel,
    run_metrics,
    run_training,
    start_process,
)

FAST = {"quantization": "fp32", "epochs": 1.0, "batch_size": 16, "learning_rate": 5e-3, "logging_steps": 3,
        "eval_steps": 10, "lora_r": 4, "lora_alpha": 8}


def new_run(db_path, model_dir, tmp_path, **overrides) -> int:
    with opened(db_path) as conn:
        return create_run(conn, model_dir, "main", config_from_dict({**FAST, **overrides}), tmp_path / "runs")


def status(db_path, run_id) -> dict:
    with opened(db_path) as conn:
        return dict(conn.execute("SELECT * FROM training_runs WHERE run_id = ?", (run_id,)).fetchone())


def listed(db_path, run_id) -> dict:
    """The run as the Train page sees it: listing the runs first ends those whose process has died."""
    with opened(db_path) as conn:
        return next(r for r in list_runs(conn) if r["run_id"] == run_id)


def wait_for(condition, timeout=180.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def last_step(db_path) -> int:
    with opened(db_path) as conn:
        return conn.execute("SELECT coalesce(max(step), 0) FROM training_metrics").fetchone()[0]


def hold(db_path, run_id, pid, status="running"):
    """Give the run to process `pid`, as its claim would."""
    with opened(db_path) as conn:
        conn.execute("UPDATE training_runs SET status = ?, pid = ? WHERE run_id = ?", (status, pid, run_id))


def audit_trail(db_path, run_id) -> list[tuple]:
    with opened(db_path) as conn:
        return [tuple(r) for r in conn.execute(
            "SELECT action, actor, detail FROM audit_log WHERE entity = 'training_runs' AND entity_id = ? "
            "ORDER BY audit_id", (str(run_id),))]


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
def test_cancel_and_resume_with_real_processes_keep_one_process_per_run(split_db, tiny_model_dir, tmp_path,
                                                                        synthetic_cases):
    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path, max_steps=30, logging_steps=1)
    first = start_process(db_path, run_id, actor="dr who", client="web test")
    assert status(db_path, run_id)["pid"] == first.pid, "the launched process holds the run before it starts"
    wait_for(lambda: listed(db_path, run_id)["step"], what="the first step")
    with opened(db_path) as conn:
        assert request_cancel(conn, run_id, actor="dr who") == "cancelling"

    # The first process lives on for a moment: a resume now is refused, whoever asks.
    with pytest.raises(RunBusy, match=f"run {run_id} is still stopping after a cancel \\(process {first.pid}\\); "
                                      "resume it once that process has exited"):
        start_process(db_path, run_id, resume=True)
    with pytest.raises(RunBusy, match="still stopping after a cancel"):
        run_training(db_path, run_id, resume=True)

    seen = []
    while (run := listed(db_path, run_id))["status"] != "cancelled":
        seen.append((run["status"], jobs.exit_code(first.pid) is not None))
        assert len(seen) < 900, "the cancelled process did not stop"
        time.sleep(0.2)
    assert jobs.exit_code(first.pid) == 0, jobs.log_tail(first.log_path)
    assert {state for state, _ in seen} == {"cancelling"} and ("cancelling", False) in seen, \
        "'cancelling' while the process lived, 'cancelled' only once it had exited"
    assert run["pid"] is None and run["adapter_model_id"] is None and run["finished_at"]
    stopped_at = run["step"]
    output = tmp_path / "runs" / f"run-{run_id}"
    assert (output / "checkpoints" / f"checkpoint-{stopped_at}").is_dir(), "a checkpoint where it stopped"
    assert not (output / "adapter").exists(), "a cancelled process saves no adapter"
    assert f"cancelled; resume it with: python -m train --resume {run_id}" in jobs.log_tail(first.log_path)
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM models WHERE kind = 'adapter'").fetchone()[0] == 0
        before = {m["step"]: (m["train_loss"], m["logged_at"]) for m in run_metrics(conn, run_id)}

    second = start_process(db_path, run_id, resume=True, actor="dr who", client="web test")
    wait_for(lambda: listed(db_path, run_id)["status"] == "finished", what="the resumed run to finish")
    wait_for(lambda: jobs.exit_code(second.pid) is not None, 60, "the resumed process to exit")
    assert jobs.exit_code(second.pid) == 0, jobs.log_tail(second.log_path)
    run = status(db_path, run_id)
    assert run["pid"] is None and run["total_steps"] == 30
    with opened(db_path) as conn:
        adapters = conn.execute("SELECT model_id, details FROM models WHERE kind = 'adapter'").fetchall()
        metrics = run_metrics(conn, run_id)
    assert [a["model_id"] for a in adapters] == [run["adapter_model_id"]], "one adapter, registered at the end"
    assert json.loads(adapters[0]["details"]) == {"training_run": run_id}
    assert [m["step"] for m in metrics] == list(range(1, 31)), "each step once"
    # The first process's points up to its checkpoint stay as they were; every later one is the second's.
    assert {m["step"]: (m["train_loss"], m["logged_at"]) for m in metrics if m["step"] <= stopped_at} == before
    with opened(db_path) as conn:
        (resume_time,) = conn.execute("SELECT at FROM audit_log WHERE action = 'resume-training-run'").fetchone()
    assert all(m["logged_at"] >= resume_time for m in metrics if m["step"] > stopped_at)

    trail = audit_trail(db_path, run_id)
    assert [json.loads(detail).get("pid") for _, _, detail in trail] == [
        None, first.pid, first.pid, first.pid, second.pid, second.pid]
    assert [(action, actor) for action, actor, _ in trail] == [
        ("create-training-run", "cli"), ("start-training-run", "dr who"), ("cancel-training-run", "dr who"),
        ("mark-cancelled", "system"), ("resume-training-run", "dr who"), ("finish-training-run", "system")]
    details = " ".join(detail for _, _, detail in trail)
    assert not any(case["diagnosis"] in details or case["regimen"] in details for case in synthetic_cases), \
        "no case text in the audit log"


# On the CPU (gloo): `torchrun`, and `accelerate launch --multi_gpu` told to use the CPU by ACCELERATE_USE_CPU;
# `accelerate launch --cpu --num_processes 2` starts one process (docs/scale-out.md). Both on a free port, not the
# default 29500 that another job on the machine may hold.
TWO_PROCESSES = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train"]
ACCELERATE_TWO_PROCESSES = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
                            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "train"]

# A sitecustomize.py for the launched processes: each notes its rank and every SQLite file it opens.
NOTE_DATABASE_OPENS = """
import os, sys

def _note(line):
    with open(os.path.join({folder!r}, str(os.getpid())), "a") as notes:
        notes.write(line + "\\n")

_note("rank " + os.environ.get("RANK", "-"))
sys.addaudithook(lambda event, args: event == "sqlite3.connect" and _note("opened " + str(args[0])))
"""


@pytest.mark.slow
def test_two_processes_train_one_run_recorded_by_the_main_one_through_a_cancel_and_a_resume(split_db, tiny_model_dir,
                                                                                           tmp_path):
    """Started with torchrun, resumed with accelerate launch."""
    db_path, _ = split_db
    notes, hooks = tmp_path / "notes", tmp_path / "hooks"
    notes.mkdir()
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(NOTE_DATABASE_OPENS.format(folder=str(notes)))
    env = {**os.environ, "PYTHONPATH": str(hooks)}
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(tiny_model_dir), "split": "main",
                                      "output_root": str(tmp_path / "runs"), **FAST, "max_steps": 20,
                                      "logging_steps": 1}))
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([*TWO_PROCESSES, str(config), "--db", str(db_path)], cwd=ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: last_step(db_path) >= 3, what="step 3")
        with opened(db_path) as conn:
            assert request_cancel(conn, 1) == "cancelling"
        assert first.wait(timeout=120) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    first_log = (tmp_path / "first.log").read_text()
    assert first_log.count("training run 1: cancelled; resume it by launching 2 processes of: "
                           "python -m train --resume 1") == 1, "said once, by the main process"
    run = listed(db_path, 1)
    assert (run["status"], run["processes"], run["adapter_model_id"]) == ("cancelled", 2, None)
    checkpoint = tmp_path / "runs" / "run-1" / "checkpoints" / f"checkpoint-{run['step']}"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}, \
        "a checkpoint where both stopped, with each process's random state"

    with open(tmp_path / "second.log", "w") as log:
        second = subprocess.run([*ACCELERATE_TWO_PROCESSES, "--resume", "1", "--db", str(db_path)], cwd=ROOT,
                                env={**env, "ACCELERATE_USE_CPU": "1"}, stdout=log, stderr=subprocess.STDOUT,
                                timeout=300)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    assert (tmp_path / "second.log").read_text().count("training run 1: finished") == 1

    assert store_intact(db_path)["training_runs"] == 1, "one run row"
    run = listed(db_path, 1)
    assert (run["status"], run["processes"], run["total_steps"], run["pid"]) == ("finished", 2, 20, None)
    with opened(db_path) as conn:
        adapters = conn.execute("SELECT model_id, path FROM models WHERE kind = 'adapter'").fetchall()
        metrics = run_metrics(conn, 1)
    assert [tuple(a) for a in adapters] == [(run["adapter_model_id"], str(tmp_path / "runs" / "run-1" / "adapter"))]
    info = json.loads((tmp_path / "runs" / "run-1" / "adapter" / "rocore_adapter.json").read_text())
    assert info["processes"] == 2
    assert [m["step"] for m in metrics] == list(range(1, 21)), "each step once"
    # Two processes of 16 examples a step go through an epoch in half the steps one process takes.
    assert metrics[-1]["epoch"] == pytest.approx(20 / math.ceil(info["n_train_examples"] / 32))

    trail = audit_trail(db_path, 1)
    assert [action for action, _, _ in trail] == ["create-training-run", "start-training-run", "cancel-training-run",
                                                  "mark-cancelled", "resume-training-run", "finish-training-run"]
    start, resume, finish = (json.loads(trail[i][2]) for i in (1, 4, 5))
    assert start["processes"] == resume["processes"] == 2 and finish["pid"] == resume["pid"] != start["pid"]

    ranks = {}
    for note in notes.iterdir():
        lines = note.read_text().splitlines()
        ranks[int(note.name)] = (lines[0].removeprefix("rank "),
                                 any(line == f"opened {db_path}" for line in lines[1:]))
    assert sorted(rank for rank, _ in ranks.values() if rank != "-") == ["0", "0", "1", "1"]
    assert {pid for pid, (_, opened_db) in ranks.items() if opened_db} == {start["pid"], resume["pid"]}, \
        "only the main process of each launch opened the database"


@pytest.mark.slow
def test_a_process_that_no_longer_holds_its_run_stops_and_records_nothing(split_db, tiny_model_dir, tmp_path):
    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path, max_steps=5000, logging_steps=1)
    job = start_process(db_path, run_id)
    other = subprocess.Popen(["sleep", "120"])
    try:
        wait_for(lambda: listed(db_path, run_id)["step"], what="the first step")
        with opened(db_path) as conn, db.transaction(conn):  # another process takes the run (by mistake)
            conn.execute("UPDATE training_runs SET pid = ? WHERE run_id = ?", (other.pid, run_id))
            taken = [tuple(m) for m in conn.execute("SELECT * FROM training_metrics WHERE run_id = ?", (run_id,))]
        wait_for(lambda: jobs.exit_code(job.pid) is not None, 60, "the process to stop")
        assert jobs.exit_code(job.pid) == 1
        assert f"stopped: run {run_id} is now held by process {other.pid}" in jobs.log_tail(job.log_path)
        run = listed(db_path, run_id)
        assert (run["status"], run["pid"], run["adapter_model_id"]) == ("running", other.pid, None)
        with opened(db_path) as conn:
            assert [tuple(m) for m in conn.execute("SELECT * FROM training_metrics WHERE run_id = ?",
                                                   (run_id,))] == taken, "no point written after losing the run"
            assert conn.execute("SELECT count(*) FROM models WHERE kind = 'adapter'").fetchone()[0] == 0
    finally:
        for pid in (job.pid, other.pid):
            if jobs.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        other.wait()


def test_a_cancel_waits_for_the_process_that_holds_the_run(split_db, tiny_model_dir, tmp_path):
    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path)
    holder = subprocess.Popen(["sleep", "120"])  # stands in for the training process
    try:
        hold(db_path, run_id, holder.pid)
        with opened(db_path) as conn:
            assert request_cancel(conn, run_id, actor="dr who", client="web test") == "cancelling"
            assert request_cancel(conn, run_id) is None, "nothing more to cancel"
        assert listed(db_path, run_id)["status"] == "cancelling"
        with pytest.raises(RunBusy, match=f"still stopping after a cancel \\(process {holder.pid}\\)"):
            start_process(db_path, run_id, resume=True)
    finally:
        holder.kill()
        holder.wait()
    run = listed(db_path, run_id)
    assert (run["status"], run["pid"], run["error"]) == ("cancelled", None, None) and run["finished_at"]
    assert [(a, actor) for a, actor, _ in audit_trail(db_path, run_id)] == [
        ("create-training-run", "cli"), ("cancel-training-run", "dr who"), ("mark-cancelled", "system")]


def test_progress_is_recorded_from_the_first_step_and_a_cancel_stops_an_evaluation(split_db, tiny_model_dir,
                                                                                   tmp_path):
    from transformers import TrainerControl, TrainerState

    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path)
    hold(db_path, run_id, os.getpid())
    progress = _progress_callback(db_path, run_id, every=0)
    state = TrainerState(global_step=0, max_steps=120, epoch=0.0, num_input_tokens_seen=0)
    progress.on_train_begin(None, state, TrainerControl())
    progress.on_step_begin(None, state, TrainerControl())
    state.global_step, state.epoch, state.num_input_tokens_seen = 1, 0.01, 300
    progress.on_step_end(None, state, TrainerControl())
    with opened(db_path) as conn:
        (first,) = run_metrics(conn, run_id)
    assert first["step"] == 1 and first["train_loss"] is None and first["eta_s"] is not None
    assert status(db_path, run_id)["total_steps"] == 120
    progress.on_prediction_step(None, state, TrainerControl())  # not cancelled: the evaluation goes on
    with opened(db_path) as conn:
        request_cancel(conn, run_id)
    for event in (progress.on_prediction_step, progress.on_evaluate, progress.on_save, progress.on_step_end):
        with pytest.raises(TrainingCancelled):
            event(None, state, TrainerControl())


def test_a_process_that_lost_its_run_writes_no_progress(split_db, tiny_model_dir, tmp_path):
    from transformers import TrainerControl, TrainerState

    db_path, _ = split_db
    run_id = new_run(db_path, tiny_model_dir, tmp_path)
    hold(db_path, run_id, os.getpid() + 1)  # another process holds it
    progress = _progress_callback(db_path, run_id, every=0)
    state = TrainerState(global_step=3, max_steps=120, epoch=0.1, num_input_tokens_seen=900)
    for event in (progress.on_train_begin, progress.on_step_end, progress.on_prediction_step):
        with pytest.raises(RunTakenOver, match=f"run {run_id} is now held by process {os.getpid() + 1}"):
            event(None, state, TrainerControl())
    with pytest.raises(RunTakenOver):
        progress.on_log(None, state, TrainerControl(), logs={"loss": 1.0})
    with opened(db_path) as conn:
        assert run_metrics(conn, run_id) == []


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
    hold(db_path, run_id, os.getpid())
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
@pytest.mark.fault
def test_a_killed_process_is_detected_and_its_points_past_the_checkpoint_are_replaced(split_db, tiny_model_dir,
                                                                                      tmp_path):
    db_path, _ = split_db
    # Checkpoints every 10 steps; killed a little after the first, seconds before the second.
    run_id = new_run(db_path, tiny_model_dir, tmp_path, max_steps=20, eval_steps=10, logging_steps=1)
    process = subprocess.Popen([sys.executable, "-m", "train", "--db", str(db_path), "--run", str(run_id)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (listed(db_path, run_id)["step"] or 0) >= 12, what="step 12")
    assert status(db_path, run_id)["pid"] == process.pid
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    run = listed(db_path, run_id)
    assert run["status"] == "failed" and f"python -m train --resume {run_id}" in run["error"]
    checkpoints = tmp_path / "runs" / f"run-{run_id}" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-10"]
    with opened(db_path) as conn:
        before = {m["step"]: tuple(m) for m in run_metrics(conn, run_id)}
    assert max(before) > 10, "the killed process got past its checkpoint"
    assert store_intact(db_path)["training_runs"] == 1

    assert run_training(db_path, run_id, resume=True) == "finished"
    with opened(db_path) as conn:
        after = {m["step"]: tuple(m) for m in run_metrics(conn, run_id)}
        (resumed_at,) = conn.execute("SELECT at FROM audit_log WHERE action = 'resume-training-run'").fetchone()
    assert sorted(after) == list(range(1, 21))
    assert {step: row for step, row in after.items() if step <= 10} == {
        step: row for step, row in before.items() if step <= 10}
    assert all(row[-1] >= resumed_at for step, row in after.items() if step > 10), \
        "the points after the checkpoint are the resumed process's, none left from the killed one"
    counts = store_intact(db_path)
    assert counts["training_metrics"] == 20 and counts["training_runs"] == 1


def test_a_version_2_database_gains_the_cancelling_status_keeping_every_row(tmp_path):
    from test_db import _all_kept, _columns, _rows, version_2_database

    path = tmp_path / "v2.db"
    old = version_2_database(path)
    old.execute("INSERT INTO training_runs (base_model_id, split_id, config, output_dir, status, pid, prompt_format) "
                "VALUES (1, 1, '{}', '/runs/2', 'running', 4242, 'chat')")
    old.executemany("INSERT INTO training_metrics (run_id, step, train_loss) VALUES (2, ?, 1.0)", [(1,), (2,)])
    columns, before = _columns(old), _rows(old, _columns(old))
    old.close()
    with opened(path) as conn:
        _all_kept(conn, columns, before)
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == db.SCHEMA_VERSION >= 3
        with opened(tmp_path / "new.db") as new:
            assert _columns(conn)["training_runs"] == _columns(new)["training_runs"], "as a new database has it"
        conn.execute("UPDATE training_runs SET status = 'cancelling', log_path = '/logs/x.log', total_steps = 9 "
                     "WHERE run_id = 2")
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE training_runs SET status = 'paused' WHERE run_id = 2")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'training_runs_status'").fetchone()
        conn.execute("DELETE FROM training_runs WHERE run_id = 2")
        assert conn.execute("SELECT count(*) FROM training_metrics WHERE run_id = 2").fetchone()[0] == 0, \
            "training_metrics still refers to the rebuilt table"


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
    config.write_text(f"base_model: {tiny_model_dir}\n")
    sharded = subprocess.run([sys.executable, "-m", "train", str(config), "--db", str(db_path)], cwd=ROOT,
                             env={**os.environ, "ACCELERATE_USE_DEEPSPEED": "true"}, capture_output=True, text=True,
                             timeout=120)
    assert sharded.returncode == 1 and "not started: DeepSpeed is not supported" in sharded.stderr
    assert store_intact(db_path)["training_runs"] == 0
