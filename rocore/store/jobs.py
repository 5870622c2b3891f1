"""Long jobs (generation, training) as child processes that outlive a page reload or an app restart.

A page only launches a job and then reads its progress from the database; the job's process id is
recorded there, so a run whose process has died can be told from one still working, and a run held
by a live process is not given to a second one.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rocore.store.audit import audit
from rocore.store.db import NOW, transaction

ROOT = Path(__file__).resolve().parents[2]
_children: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class Job:
    pid: int
    log_path: Path
    command: str


def command_line(module: str, args: list[str]) -> str:
    """What a researcher would type to run the same job from a shell."""
    return shlex.join(["python", "-m", module, *args])


def launch(module: str, args: list[str], log_dir: str | Path, name: str | None = None) -> Job:
    """Start `python -m module args...` detached from the caller's session, output to a log file
    named `name` (default: the module and its first argument) and the time."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    log_path = log_dir / f"{name or module.replace('.', '-') + '-' + (args[0] if args else 'job')}-{stamp}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", module, *args], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
    _children[process.pid] = process
    return Job(process.pid, log_path, command_line(module, args))


def pid_alive(pid: int | None) -> bool:
    """Whether a process is still running here (a finished child is reaped, a zombie counts as dead)."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def exit_code(pid: int) -> int | None:
    """A job this process launched: its exit status once it has ended, None while it runs or when it
    was launched by another app process (whose children it cannot wait for)."""
    child = _children.get(pid)
    return None if child is None else child.poll()


def log_tail(log_path: str | Path, lines: int = 20, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a job's log, reading only its end: a training log grows for hours.
    Progress bars' carriage returns count as line ends, so a bar shows as its latest state."""
    try:
        with open(log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - max_bytes))
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.replace("\r", "\n").split("\n") if line.strip()]
    return "\n".join(kept[-lines:])


class RunBusy(RuntimeError):
    """Another live process is working on the run."""


# Why a run is refused while another live process holds it, by the run's status.
_BUSY = {
    "running": "is already running (process {pid}); wait for it or cancel it",
    "queued": "is starting (process {pid}); wait for it or cancel it",
    "cancelling": "is still stopping after a cancel (process {pid}); resume it once that process has exited",
}


def refuse_if_running_elsewhere(conn: sqlite3.Connection, table: str, run_id: int) -> None:
    """Refuse (RunBusy) while another live process holds the run, whatever its status says: one still
    starting, or still stopping after a cancel, holds it too. Call it inside the transaction that
    takes the run, so two processes started at once (a double click, two tabs) cannot both take it."""
    row = conn.execute(f"SELECT status, pid FROM {table} WHERE run_id = ?", (run_id,)).fetchone()
    if row and row["pid"] is not None and row["pid"] != os.getpid() and pid_alive(row["pid"]):
        reason = _BUSY.get(row["status"], "is held by process {pid}")
        raise RunBusy(f"run {run_id} {reason.format(pid=row['pid'])}")


def _exit_note(pid: int | None) -> str:
    code = exit_code(pid) if pid else None
    if code is None:
        return ""
    return f" (killed by signal {-code})" if code < 0 else f" (exit status {code})"


def mark_dead_runs(conn: sqlite3.Connection, table: str, error: Callable[[int], str]) -> int:
    """In `table` (generation_runs or training_runs), end every run whose process no longer exists: one
    left 'running', or 'queued' by a launched process that died before it began, becomes 'failed' with
    `error(run_id)` (and the exit status, where this process launched it); one left 'cancelling'
    becomes 'cancelled', the only way a run gets there once a process held it. Each change is audited;
    returns how many."""
    ended = [(r["run_id"], r["status"], r["pid"]) for r in conn.execute(
        f"SELECT run_id, status, pid FROM {table} WHERE status IN ('running', 'cancelling') "
        "OR (status = 'queued' AND pid IS NOT NULL) ORDER BY run_id") if not pid_alive(r["pid"])]
    if ended:  # the Generate and Train pages sweep every few seconds: no write lock when nothing died
        with transaction(conn):
            for run_id, status, pid in ended:
                new = "cancelled" if status == "cancelling" else "failed"
                message = None if new == "cancelled" else error(run_id) + _exit_note(pid)
                # Only if nothing took the run since it was read (a resume claims it under the same lock).
                if conn.execute(f"UPDATE {table} SET status = ?, pid = NULL, error = ?, "
                                f"finished_at = coalesce(finished_at, {NOW}) WHERE run_id = ? AND status = ? "
                                "AND pid IS ?", (new, message, run_id, status, pid)).rowcount:
                    audit(conn, "system", f"mark-{new}", table, run_id, {"pid": pid, "was": status})
    return len(ended)
