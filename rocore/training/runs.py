"""Training runs as rows: what was trained on what, how it is going, and how it ended.

`python -m train` (usually launched by the Train page as a background process) writes its
progress here as it happens, so a page reload, an app restart or a crash loses nothing: a run
whose process died is recognised by its process id and marked failed, and any run with a
checkpoint can be resumed.

A run is held by one live process at a time, its `pid`: only that process records the run's
progress, its end and its adapter, each write checking in its own transaction that it still holds
the run; a second process (a Resume while the first still runs) is refused. A cancel makes the run
'cancelling'; it is 'cancelled' only once its process has exited.

A run trained data parallel (`torchrun` or `accelerate launch` of `python -m train`) is held by its
main process (rank 0), which alone opens the database: it takes the run and hands the others what
they train on, and at each step it tells them whether to go on, so all stop together on a cancel.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import sqlite3
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

from rocore.store import jobs
from rocore.store.audit import audit
from rocore.store.db import NOW, opened, transaction
from rocore.store.registry import register_model, register_model_in_transaction
from rocore.store.jobs import mark_dead_runs, pid_alive, refuse_if_running_elsewhere
from rocore.model.loading import ModelError, check_model_dir
from rocore.model.prompts import PROMPT_FORMATS, check_prompt_format, default_prompt_format
from rocore.data.splits import SplitError, split_cases, split_by_name_or_newest
from rocore.training.trainer import (TrainingCancelled, TrainingConfig, check_config, from_main, join_processes,
                                     train_adapter)

log = logging.getLogger(__name__)
# The audit actor of what a process does on its own: a run's end, a dead process noticed.
SYSTEM = "system"


class TrainingConfigError(ValueError):
    """A training request that cannot start; the message lists every problem."""


class RunTakenOver(RuntimeError):
    """This process no longer holds its run: it stops at once and records nothing more."""


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
               output_root: str | Path, actor: str = "cli", client: str | None = None) -> int:
    """Validate everything a run needs and record it as queued; raise TrainingConfigError listing every problem."""
    problems = list(check_config(config))
    try:
        check_model_dir(Path(base_model))
        config = replace(config, prompt_format=_prompt_format(base_model, config.prompt_format))
    except ModelError as exc:
        problems.append(f"base_model: {exc}")
    split_id = None
    try:
        split_id = split_by_name_or_newest(conn, split)[0]
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
        audit(conn, actor, "create-training-run", "training_runs", run_id,
              {"base_model_id": base_id, "split_id": split_id, "config": asdict(config)}, client)
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


def _held_status(conn: sqlite3.Connection, run_id: int) -> str:
    """The run's status, read in the caller's transaction; RunTakenOver once this process no longer holds it."""
    status, pid = conn.execute("SELECT status, pid FROM training_runs WHERE run_id = ?", (run_id,)).fetchone()
    if pid != os.getpid():
        raise RunTakenOver(f"run {run_id} is now held by process {pid}; process {os.getpid()} stopped "
                           "without recording more")
    return status


def _progress_callback(db_path: Path, run_id: int, every: float = 2.0):
    from transformers import TrainerCallback

    class DatabaseProgress(TrainerCallback):
        """Records the run's progress from its first step (the step count, speed and ETA every `every`
        seconds, the losses at each log) while this process holds the run, and stops training within
        `every` seconds of a cancel: between steps, during an evaluation, and before and after a checkpoint.
        In a data-parallel run only the main process looks at the database, and every process hears from
        it at each of these points (from_main), so all of them stop at the same one."""

        def __init__(self):
            self.started, self.first_step, self.first_tokens = time.monotonic(), 0, 0
            self.counting = False
            self.last_check = 0.0

        def _due(self, seconds: float) -> bool:
            """Whether `seconds` have passed since the last look at the run (a connection each)."""
            if time.monotonic() - self.last_check < seconds:
                return False
            self.last_check = time.monotonic()
            return True

        def _stop_if_cancelling(self, seconds: float) -> None:
            def look():
                if self._due(seconds):
                    with opened(db_path) as conn:
                        if _held_status(conn, run_id) == "cancelling":
                            raise TrainingCancelled(f"run {run_id} was cancelled")

            from_main(look)

        def _eta(self, state) -> float | None:
            done = max(state.global_step - self.first_step, 1)
            elapsed = time.monotonic() - self.started
            return elapsed / done * max(state.max_steps - state.global_step, 0) if state.max_steps else None

        def _record(self, state, logs: dict) -> str:
            """Write a metrics row for the current step, if this process still holds the run; its status."""
            import torch

            elapsed, eta = time.monotonic() - self.started, self._eta(state)
            tokens = state.num_input_tokens_seen - self.first_tokens
            memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
            with opened(db_path) as conn, transaction(conn):
                status = _held_status(conn, run_id)
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
            return status

        def on_train_begin(self, args, state, control, **kwargs):
            # The state is loaded from the checkpoint by now: points past it were recorded by a process
            # whose steps after that checkpoint are lost, and this one records its own in their place.
            def begin():
                with opened(db_path) as conn, transaction(conn):
                    status = _held_status(conn, run_id)
                    conn.execute("DELETE FROM training_metrics WHERE run_id = ? AND step > ?",
                                 (run_id, state.global_step))
                    conn.execute("UPDATE training_runs SET total_steps = ? WHERE run_id = ?", (state.max_steps, run_id))
                log.info("training from step %d to %d", state.global_step, state.max_steps)
                if status == "cancelling":
                    raise TrainingCancelled(f"run {run_id} was cancelled")

            from_main(begin)

        def on_step_begin(self, args, state, control, **kwargs):
            # Rates count only this process's steps: after a resume the state already holds the steps
            # and tokens of the earlier process.
            if not self.counting:
                self.started, self.first_step = time.monotonic(), state.global_step
                self.first_tokens, self.counting = state.num_input_tokens_seen, True

        def on_step_end(self, args, state, control, **kwargs):
            def record():
                if not self._due(every):
                    return
                status = self._record(state, {})
                eta = self._eta(state)
                log.info("step %d of %d, epoch %.2f%s", state.global_step, state.max_steps, state.epoch or 0,
                         f", about {eta / 60:.1f} min left" if eta is not None else "")
                if status == "cancelling":
                    raise TrainingCancelled(f"run {run_id} was cancelled")

            from_main(record)

        def on_prediction_step(self, args, state, control, **kwargs):
            self._stop_if_cancelling(every)  # an evaluation can take minutes

        def on_evaluate(self, args, state, control, **kwargs):
            self._stop_if_cancelling(0)  # before the checkpoint that follows it

        def on_save(self, args, state, control, **kwargs):
            self._stop_if_cancelling(0)  # the checkpoint just saved is the one to resume from

        def on_log(self, args, state, control, logs=None, **kwargs):
            from_main(lambda: self._record(state, logs or {}))

    return DatabaseProgress()


def _failure_message(exc: BaseException) -> str:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return ("out of GPU memory: lower batch_size (raise gradient_accumulation_steps to keep the effective "
                "batch), set gradient_checkpointing: true, use quantization nf4, or shorten max_length")
    return f"{type(exc).__name__}: {exc}"


def start_process(db_path: str | Path, run_id: int, *, resume: bool = False, device: str = "auto",
                  actor: str = "cli", client: str | None = None) -> jobs.Job:
    """Launch `python -m train` for a recorded run (with `resume`, continuing from its checkpoint) and
    record that process as the run's holder in the transaction that finds no other live process
    holding it, so neither a double click nor a second tab starts a second process. Refused with
    RunBusy while one lives (a run still stopping after a cancel included), TrainingConfigError for
    a finished run. The process's output goes to a log file beside the database, kept with the run."""
    db_path = Path(db_path)
    with opened(db_path) as conn, transaction(conn):
        run = conn.execute("SELECT status FROM training_runs WHERE run_id = ?", (run_id,)).fetchone()
        if run is None:
            raise TrainingConfigError(f"there is no training run {run_id}")
        refuse_if_running_elsewhere(conn, "training_runs", run_id)
        if run["status"] == "finished":
            raise TrainingConfigError(f"run {run_id} has finished; its adapter is ready")
        if run["status"] != "queued" and not resume:
            raise TrainingConfigError(f"run {run_id} is {run['status']}; resume it instead")
        args = ["--db", str(db_path), "--resume" if resume else "--run", str(run_id), "--device", device,
                "--actor", actor] + (["--client", client] if client else [])
        job = jobs.launch("train", args, db_path.parent / "logs", name=f"train-run-{run_id}")
        conn.execute("UPDATE training_runs SET status = 'queued', pid = ?, log_path = ?, error = NULL, "
                     "finished_at = NULL WHERE run_id = ?", (job.pid, str(job.log_path), run_id))
    return job


def run_training(db_path: str | Path, run_id: int, resume: bool = False, device: str = "auto",
                 actor: str = "cli", client: str | None = None) -> str:
    """Train a recorded run in this process, which takes the run for itself (RunBusy while another
    live process holds it) and alone records how it goes and ends; returns 'finished' or 'cancelled'.
    A cancelled run stays 'cancelling' while this process lives: the next look at the runs after it
    has exited (mark_dead_runs) makes it 'cancelled'. Launched in several processes, the main one takes
    the run, records it as trained by all of them and hands the others its cases; they never open the
    database, and every process returns the same outcome."""
    db_path = Path(db_path)
    processes = join_processes(device)
    run = from_main(lambda: _take(db_path, run_id, resume, device, actor, client, processes.count))
    if run is None:
        return "cancelled"  # cancelled on the page while this process was still starting
    config = config_from_dict(json.loads(run["config"]))
    output_dir = Path(run["output_dir"])
    try:
        train_cases, eval_cases, resume = from_main(lambda: _training_data(db_path, run, output_dir, resume))
        adapter_dir = train_adapter(run["base_path"], train_cases, eval_cases, output_dir, config, device=device,
                                    callbacks=[_progress_callback(db_path, run_id)], resume=resume,
                                    details={"training_run": run_id, "split_id": run["split_id"],
                                             "versions": json.loads(run["versions"])})
    except TrainingCancelled:
        if processes.main:
            _stopped(db_path, run_id)
        return "cancelled"
    except KeyboardInterrupt:
        if processes.main:
            _stopped(db_path, run_id, interrupted_by=(actor, client))
        raise
    except BaseException as exc:  # RunTakenOver included: then the run is not this process's to mark
        if processes.main:
            _failed(db_path, run_id, exc)
        raise
    return from_main(lambda: _finish(db_path, run, adapter_dir))


def _take(db_path: Path, run_id: int, resume: bool, device: str, actor: str, client: str | None,
          processes: int) -> dict | None:
    """Take the run for this process (and the `processes` it trains with); None when it was cancelled
    before this process got to it."""
    with opened(db_path) as conn, transaction(conn):
        run = conn.execute("SELECT r.*, m.path AS base_path FROM training_runs r JOIN models m "
                           "ON m.model_id = r.base_model_id WHERE r.run_id = ?", (run_id,)).fetchone()
        if run is None:
            raise TrainingConfigError(f"there is no training run {run_id}")
        refuse_if_running_elsewhere(conn, "training_runs", run_id)
        status = run["status"]
        if (status == "cancelling" and run["pid"] == os.getpid()) or (status == "cancelled" and not resume):
            return None
        if status == "finished":
            raise TrainingConfigError(f"run {run_id} has finished; its adapter is ready")
        if status != "queued" and not resume:
            raise TrainingConfigError(f"run {run_id} is {status}; continue it with: python -m train --resume {run_id}")
        conn.execute(f"UPDATE training_runs SET status = 'running', pid = ?, processes = ?, error = NULL, "
                     f"finished_at = NULL, started_at = coalesce(started_at, {NOW}) WHERE run_id = ?",
                     (os.getpid(), processes, run_id))
        audit(conn, actor, "resume-training-run" if resume else "start-training-run", "training_runs", run_id,
              {"pid": os.getpid(), "device": device, "processes": processes}, client)
    return dict(run)


def _training_data(db_path: Path, run: dict, output_dir: Path, resume: bool) -> tuple[list, list, bool]:
    """The run's training and validation cases, and whether there is a checkpoint to resume from."""
    with opened(db_path) as conn:
        train_cases = split_cases(conn, run["split_id"], "train")
        eval_cases = split_cases(conn, run["split_id"], "validation")
    return train_cases, eval_cases, resume and any(output_dir.glob("checkpoints/checkpoint-*"))


def _failed(db_path: Path, run_id: int, exc: BaseException) -> None:
    with opened(db_path) as conn, transaction(conn):
        if conn.execute(f"UPDATE training_runs SET status = 'failed', error = ?, pid = NULL, finished_at = {NOW} "
                        "WHERE run_id = ? AND pid = ?", (_failure_message(exc), run_id, os.getpid())).rowcount:
            # The type only: an exception's text can quote the data it failed on.
            audit(conn, SYSTEM, "fail-training-run", "training_runs", run_id,
                  {"pid": os.getpid(), "error": type(exc).__name__})


def _finish(db_path: Path, run: dict, adapter_dir: Path) -> str:
    """Register the adapter and end the run: 'finished', or 'cancelled' when the cancel came after
    training's last look at the run."""
    run_id = run["run_id"]
    with opened(db_path) as conn, transaction(conn):
        if _held_status(conn, run_id) == "cancelling":
            conn.execute(f"UPDATE training_runs SET finished_at = {NOW} WHERE run_id = ?", (run_id,))
            return "cancelled"
        adapter_id = register_model_in_transaction(conn, adapter_dir, "adapter", run["base_model_id"],
                                                   details={"training_run": run_id})
        conn.execute(f"UPDATE training_runs SET status = 'finished', adapter_model_id = ?, pid = NULL, "
                     f"finished_at = {NOW} WHERE run_id = ?", (adapter_id, run_id))
        audit(conn, SYSTEM, "finish-training-run", "training_runs", run_id,
              {"pid": os.getpid(), "adapter_model_id": adapter_id})
    return "finished"


def _stopped(db_path: Path, run_id: int, interrupted_by: tuple[str, str | None] | None = None) -> None:
    """This process stops on a cancel (or a Ctrl-C, `interrupted_by` whom): the run is 'cancelling' and
    stays held by it until it has exited, when mark_dead_runs makes it 'cancelled'."""
    with opened(db_path) as conn, transaction(conn):
        if conn.execute(f"UPDATE training_runs SET status = 'cancelling', finished_at = {NOW} "
                        "WHERE run_id = ? AND pid = ?", (run_id, os.getpid())).rowcount and interrupted_by:
            audit(conn, interrupted_by[0], "cancel-training-run", "training_runs", run_id,
                  {"pid": os.getpid(), "interrupted": True}, interrupted_by[1])


def request_cancel(conn: sqlite3.Connection, run_id: int, actor: str = "cli", client: str | None = None) -> str | None:
    """Ask a run to stop. One held by a live process becomes 'cancelling': the process notices within
    seconds (between steps, or during an evaluation), keeps a checkpoint to resume from and exits,
    and only then is the run 'cancelled'. One without a live process is cancelled at once. Returns
    the run's new status, or None when it was not queued or running."""
    with transaction(conn):
        run = conn.execute("SELECT status, pid FROM training_runs WHERE run_id = ?", (run_id,)).fetchone()
        if run is None or run["status"] not in ("queued", "running"):
            return None
        if pid_alive(run["pid"]):
            status = "cancelling"
            conn.execute("UPDATE training_runs SET status = 'cancelling' WHERE run_id = ?", (run_id,))
        else:
            status = "cancelled"
            conn.execute(f"UPDATE training_runs SET status = 'cancelled', pid = NULL, finished_at = {NOW} "
                         "WHERE run_id = ?", (run_id,))
        audit(conn, actor, "cancel-training-run", "training_runs", run_id, {"pid": run["pid"], "status": status},
              client)
    return status


def list_runs(conn: sqlite3.Connection) -> list[dict]:
    """Every training run with its base model, split, adapter and latest progress, newest first."""
    mark_dead_runs(conn, "training_runs", lambda run_id: (
        "the training process ended without recording why (its log may say; or it was killed, or the machine "
        f"restarted); resume it with: python -m train --resume {run_id}"))
    return [dict(r) for r in conn.execute(
        "SELECT r.*, b.path AS base_path, s.name AS split_name, a.path AS adapter_path, "
        "(SELECT max(step) FROM training_metrics m WHERE m.run_id = r.run_id) AS step, "
        "(SELECT eta_s FROM training_metrics m WHERE m.run_id = r.run_id ORDER BY step DESC LIMIT 1) AS eta_s "
        "FROM training_runs r JOIN models b ON b.model_id = r.base_model_id JOIN splits s USING (split_id) "
        "LEFT JOIN models a ON a.model_id = r.adapter_model_id ORDER BY r.run_id DESC")]


def run_metrics(conn: sqlite3.Connection, run_id: int) -> list[dict]:
    return [dict(r) for r in conn.execute("SELECT * FROM training_metrics WHERE run_id = ? ORDER BY step", (run_id,))]
