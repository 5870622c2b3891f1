"""Training runs as rows: what was trained on what, how it is going, and how it ended.

`python -m train` (usually launched by the Train page as a background process) writes its
progress here as it happens, so a page reload, an app restart or a crash loses nothing: a run
whose process died is recognised by its process id and marked failed, and any run with a
checkpoint can be resumed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sqlite3
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from rocore.store.db import NOW, opened, transaction
from rocore.store.registry import register_model
from rocore.store.jobs import mark_dead_runs, refuse_if_running_elsewhere
from rocore.model.loading import ModelError, check_model_dir
from rocore.model.prompts import PROMPT_FORMATS, check_prompt_format, default_prompt_format
from rocore.data.splits import SplitError, split_cases, split_id_by_name
from rocore.training.trainer import TrainingConfig, check_config, train_adapter


class TrainingConfigError(ValueError):
    """A training request that cannot start; the message lists every problem."""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def config_from_dict(values: dict) -> TrainingConfig:
    """A TrainingConfig from YAML/JSON values, refusing unknown keys by name."""
    known = {f.name for f in fields(TrainingConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainingConfigError(f"unknown setting {', '.join(map(repr, unknown))}; settings are {', '.join(sorted(known))}")
    values = dict(values)
    for name in ("learning_rate", "epochs", "lora_dropout", "warmup_steps"):
        if isinstance(values.get(name), str):
            # YAML reads "1e-4" (no dot) as text; a number written that way is still a number.
            try:
                values[name] = float(values[name])
            except ValueError:
                pass
    if isinstance(values.get("tasks"), str):
        values["tasks"] = [t.strip() for t in values["tasks"].split(",")]
    return TrainingConfig(**values)


def create_run(conn: sqlite3.Connection, base_model: str | Path, split: str | None, config: TrainingConfig,
               output_root: str | Path) -> int:
    """Validate everything a run needs and record it as queued; raise TrainingConfigError listing every problem."""
    problems = list(check_config(config))
    try:
        check_model_dir(Path(base_model))
        config = replace(config, prompt_format=_prompt_format(base_model, config.prompt_format))
    except ModelError as exc:
        problems.append(f"base_model: {exc}")
    split_id = None
    try:
        if split:
            split_id = split_id_by_name(conn, split)
        else:
            row = conn.execute("SELECT split_id FROM splits ORDER BY split_id DESC LIMIT 1").fetchone()
            if row is None:
                raise SplitError("there is no split yet; create one on the Data page or with 'python -m rocore split create'")
            split_id = row[0]
    except SplitError as exc:
        problems.append(f"split: {exc}")
    if problems:
        raise TrainingConfigError("; ".join(problems))
    base_id = register_model(conn, base_model, "base")
    with transaction(conn):
        run_id = conn.execute(
            "INSERT INTO training_runs (base_model_id, split_id, config, versions, output_dir, prompt_format) "
            "VALUES (?, ?, ?, ?, '', ?)",
            (base_id, split_id, json.dumps(asdict(config)), json.dumps(library_versions()),
             config.prompt_format)).lastrowid
        output_dir = Path(output_root).resolve() / f"run-{run_id}"
        conn.execute("UPDATE training_runs SET output_dir = ? WHERE run_id = ?", (str(output_dir), run_id))
    return run_id


def _prompt_format(base_model: str | Path, requested: str) -> str:
    """The format a run trains in, settled (and stored in its config) before it starts, so that the
    run's record says which format it used even when it asked for auto."""
    from transformers import AutoTokenizer

    if requested not in ("auto", *PROMPT_FORMATS):
        return requested  # check_config has said why
    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{base_model}: its tokenizer could not be loaded: {exc}") from exc
    prompt_format = default_prompt_format(tokenizer, base_model) if requested == "auto" else requested
    check_prompt_format(tokenizer, prompt_format)
    return prompt_format


def _progress_callback(db_path: Path, run_id: int):
    from transformers import TrainerCallback

    class DatabaseProgress(TrainerCallback):
        """Writes each log line to training_metrics and stops when the run is cancelled."""

        def __init__(self):
            self.started, self.first_step, self.first_tokens = time.monotonic(), 0, 0
            self.counting = False
            self.last_check = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            # Rates count only this process's steps: after a resume the state (loaded after
            # on_train_begin) already holds the steps and tokens of the earlier process.
            if not self.counting:
                self.started, self.first_step = time.monotonic(), state.global_step
                self.first_tokens, self.counting = state.num_input_tokens_seen, True

        def on_log(self, args, state, control, logs=None, **kwargs):
            import torch

            logs = logs or {}
            elapsed = time.monotonic() - self.started
            done = max(state.global_step - self.first_step, 1)
            eta = elapsed / done * max(state.max_steps - state.global_step, 0) if state.max_steps else None
            tokens = state.num_input_tokens_seen - self.first_tokens
            memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
            with opened(db_path) as conn, transaction(conn):
                conn.execute(
                    "INSERT INTO training_metrics (run_id, step, epoch, train_loss, eval_loss, learning_rate, "
                    "tokens_per_s, gpu_mem_bytes, eta_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (run_id, step) DO UPDATE SET epoch = excluded.epoch, "
                    "train_loss = coalesce(excluded.train_loss, train_loss), "
                    "eval_loss = coalesce(excluded.eval_loss, eval_loss), "
                    "learning_rate = coalesce(excluded.learning_rate, learning_rate), "
                    "tokens_per_s = coalesce(excluded.tokens_per_s, tokens_per_s), "
                    "gpu_mem_bytes = coalesce(excluded.gpu_mem_bytes, gpu_mem_bytes), eta_s = excluded.eta_s",
                    (run_id, state.global_step, state.epoch, logs.get("loss"), logs.get("eval_loss"),
                     logs.get("learning_rate"), tokens / elapsed if elapsed else None,
                     memory, eta))

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.last_check < 2:
                return
            self.last_check = time.monotonic()
            with opened(db_path) as conn:
                status = conn.execute("SELECT status FROM training_runs WHERE run_id = ?", (run_id,)).fetchone()[0]
            if status == "cancelled":
                control.should_save = True
                control.should_training_stop = True

    return DatabaseProgress()


def _failure_message(exc: BaseException) -> str:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ("out of GPU memory: lower batch_size (raise gradient_accumulation_steps to keep the effective "
                "batch), set gradient_checkpointing: true, use quantization nf4, or shorten max_length")
    return f"{type(exc).__name__}: {exc}"


def run_training(db_path: str | Path, run_id: int, resume: bool = False, device: str = "auto") -> str:
    """Train a recorded run in this process and record how it ends; returns the final status."""
    db_path = Path(db_path)
    with opened(db_path) as conn, transaction(conn):
        run = conn.execute("SELECT r.*, m.path AS base_path FROM training_runs r JOIN models m "
                           "ON m.model_id = r.base_model_id WHERE r.run_id = ?", (run_id,)).fetchone()
        if run is None:
            raise TrainingConfigError(f"there is no training run {run_id}")
        refuse_if_running_elsewhere(conn, "training_runs", run_id)
        if run["status"] == "cancelled" and not resume:
            return "cancelled"  # cancelled on the page while this process was still starting
        conn.execute(f"UPDATE training_runs SET status = 'running', pid = ?, error = NULL, finished_at = NULL, "
                     f"started_at = coalesce(started_at, {NOW}) WHERE run_id = ?", (os.getpid(), run_id))
    config = config_from_dict(json.loads(run["config"]))
    output_dir = Path(run["output_dir"])
    try:
        with opened(db_path) as conn:
            train_cases = split_cases(conn, run["split_id"], "train")
            eval_cases = split_cases(conn, run["split_id"], "validation")
        resume = resume and any(output_dir.glob("checkpoints/checkpoint-*"))
        adapter_dir = train_adapter(run["base_path"], train_cases, eval_cases, output_dir, config, device=device,
                                    callbacks=[_progress_callback(db_path, run_id)], resume=resume,
                                    details={"training_run": run_id, "split_id": run["split_id"],
                                             "versions": json.loads(run["versions"])})
    except BaseException as exc:
        status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
        with opened(db_path) as conn, transaction(conn):
            conn.execute(f"UPDATE training_runs SET status = ?, error = ?, pid = NULL, finished_at = {NOW} "
                         "WHERE run_id = ?", (status, _failure_message(exc), run_id))
        raise
    with opened(db_path) as conn:
        cancelled = conn.execute("SELECT status FROM training_runs WHERE run_id = ?", (run_id,)).fetchone()[0] == "cancelled"
        adapter_id = None if cancelled else register_model(conn, adapter_dir, "adapter", run["base_model_id"],
                                                           details={"training_run": run_id})
        with transaction(conn):
            conn.execute(f"UPDATE training_runs SET status = ?, adapter_model_id = ?, pid = NULL, finished_at = {NOW} "
                         "WHERE run_id = ?", ("cancelled" if cancelled else "finished", adapter_id, run_id))
    return "cancelled" if cancelled else "finished"


def request_cancel(conn: sqlite3.Connection, run_id: int) -> None:
    """Ask a run to stop: a running process notices within seconds and keeps a checkpoint to resume from."""
    with transaction(conn):
        conn.execute(f"UPDATE training_runs SET status = 'cancelled', finished_at = {NOW} "
                     "WHERE run_id = ? AND status IN ('queued', 'running')", (run_id,))


def list_runs(conn: sqlite3.Connection) -> list[dict]:
    """Every training run with its base model, split, adapter and latest progress, newest first."""
    mark_dead_runs(conn, "training_runs", lambda run_id: (
        "the training process ended without recording why (killed, or the machine restarted); "
        f"resume it with: python -m train --resume {run_id}"))
    return [dict(r) for r in conn.execute(
        "SELECT r.*, b.path AS base_path, s.name AS split_name, a.path AS adapter_path, "
        "(SELECT max(step) FROM training_metrics m WHERE m.run_id = r.run_id) AS step, "
        "(SELECT eta_s FROM training_metrics m WHERE m.run_id = r.run_id ORDER BY step DESC LIMIT 1) AS eta_s "
        "FROM training_runs r JOIN models b ON b.model_id = r.base_model_id JOIN splits s USING (split_id) "
        "LEFT JOIN models a ON a.model_id = r.adapter_model_id ORDER BY r.run_id DESC")]


def run_metrics(conn: sqlite3.Connection, run_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM training_metrics WHERE run_id = ? ORDER BY step", (run_id,))]
