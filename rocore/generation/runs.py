"""Generation runs: a model (with or without its adapter) answers every case of a split part, stored row by row.

A run is a row in `generation_runs`; each answer is a row in `generations`, written a batch at a
time, so an interrupted run resumes where it stopped and a rerun generates only what is missing.
Prompts are grouped by task, sorted by length and left-padded, so a batch wastes little on padding.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rocore.store.db import NOW, opened, transaction
from rocore.store.jobs import mark_dead_runs, refuse_if_running_elsewhere
from rocore.model.loading import LoadedModel, using_adapter
from rocore.model.prompts import TEMPLATE_IDS, build_prompt, check_tasks, extract_answer

DEFAULT_MAX_NEW_TOKENS = {"regimen": 64, "modality": 8, "icd10": 12}


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    elapsed_s: float
    new_tokens: int

    @property
    def rate(self) -> float:
        """Rows per second so far."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


def decoding_settings(max_new_tokens: dict[str, int] | None = None) -> dict:
    """Greedy decoding, with per-task limits on new tokens: stored with the run."""
    return {"do_sample": False, "num_beams": 1,
            "max_new_tokens": {**DEFAULT_MAX_NEW_TOKENS, **(max_new_tokens or {})}}


def get_or_create_run(conn: sqlite3.Connection, base_model_id: int, adapter_model_id: int | None,
                      split_id: int, part: str, tasks: list[str], quantization: str,
                      decoding: dict) -> tuple[int, bool]:
    """(run id, resumed): a run with the same model, data and settings is resumed, not repeated."""
    tasks = check_tasks(tasks)
    key = (base_model_id, adapter_model_id, split_id, part, json.dumps(tasks), quantization,
           json.dumps(decoding, sort_keys=True))
    with transaction(conn):
        row = conn.execute(
            "SELECT run_id FROM generation_runs WHERE base_model_id = ? AND adapter_model_id IS ? AND "
            "split_id = ? AND part = ? AND tasks = ? AND quantization = ? AND decoding = ? "
            "ORDER BY run_id DESC LIMIT 1", key).fetchone()
        if row:
            return row[0], True
        run_id = conn.execute(
            "INSERT INTO generation_runs (base_model_id, adapter_model_id, split_id, part, tasks, "
            "quantization, decoding) VALUES (?, ?, ?, ?, ?, ?, ?)", key).lastrowid
    return run_id, False


def pending_items(conn: sqlite3.Connection, run_id: int) -> list[tuple[str, str, str]]:
    """(case_id, task, diagnosis) still without an output in this run."""
    run = conn.execute("SELECT split_id, part, tasks FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
    tasks = json.loads(run["tasks"])
    rows = conn.execute(
        "SELECT c.case_id, c.diagnosis FROM split_cases s JOIN cases c USING (case_id) "
        "WHERE s.split_id = ? AND s.part = ? ORDER BY c.case_id", (run["split_id"], run["part"])).fetchall()
    done = {(r[0], r[1]) for r in conn.execute("SELECT case_id, task FROM generations WHERE run_id = ?", (run_id,))}
    return [(r["case_id"], task, r["diagnosis"]) for task in tasks for r in rows if (r["case_id"], task) not in done]


def _set_status(db_path: Path, run_id: int, status: str, error: str | None = None) -> None:
    with opened(db_path) as conn, transaction(conn):
        if status == "running":
            refuse_if_running_elsewhere(conn, "generation_runs", run_id)
        conn.execute(
            "UPDATE generation_runs SET status = ?, error = ?, pid = ?, finished_at = CASE WHEN ? IN "
            f"('finished', 'failed', 'cancelled') THEN {NOW} END WHERE run_id = ?",
            (status, error, os.getpid() if status == "running" else None, status, run_id))


def list_runs(conn: sqlite3.Connection) -> list[dict]:
    """Every generation run with its models, split, progress and a label for a select box, newest first."""
    mark_dead_runs(conn, "generation_runs",
                   lambda run_id: "the generation process ended without finishing; start it again to resume")
    rows = conn.execute(
        "SELECT r.*, s.name AS split_name, b.path AS base_path, a.path AS adapter_path, "
        "(SELECT count(*) FROM generations g WHERE g.run_id = r.run_id) AS done, "
        "(SELECT count(*) FROM split_cases sc WHERE sc.split_id = r.split_id AND sc.part = r.part) "
        "  * json_array_length(r.tasks) AS total "
        "FROM generation_runs r JOIN splits s USING (split_id) JOIN models b ON b.model_id = r.base_model_id "
        "LEFT JOIN models a ON a.model_id = r.adapter_model_id ORDER BY r.run_id DESC").fetchall()
    runs = []
    for r in rows:
        kind = f"fine-tuned ({Path(r['adapter_path']).name})" if r["adapter_path"] else "base"
        label = (f"run {r['run_id']}: {Path(r['base_path']).name}, {kind}, {r['split_name']}/{r['part']}, "
                 f"{r['done']:,} outputs ({r['status']})")
        runs.append({**dict(r), "label": label})
    return runs


def latest_run_pair(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """(base run, fine-tuned run): the newest fine-tuned run and the newest base-only run of the same
    base model over the same split part, or None."""
    pair = conn.execute(
        "SELECT b.run_id, f.run_id FROM generation_runs f JOIN generation_runs b "
        "ON b.base_model_id = f.base_model_id AND b.split_id = f.split_id AND b.part = f.part "
        "WHERE f.adapter_model_id IS NOT NULL AND b.adapter_model_id IS NULL "
        "ORDER BY f.run_id DESC, b.run_id DESC LIMIT 1").fetchone()
    return None if pair is None else (pair[0], pair[1])


def suggested_run_pair(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """The pair a page offers first: the latest base and fine-tuned pair, else the two newest runs."""
    pair = latest_run_pair(conn)
    if pair is None:
        newest = [r[0] for r in conn.execute("SELECT run_id FROM generation_runs ORDER BY run_id DESC LIMIT 2")]
        pair = (newest[1], newest[0]) if len(newest) == 2 else None
    return pair


def _batches(loaded: LoadedModel, items: list[tuple[str, str, str]], batch_size: int):
    """Batches of one task each, longest prompts first (an out-of-memory error shows at once)."""
    tokenizer = loaded.tokenizer
    by_task: dict[str, list[tuple[int, str, str]]] = {}
    for case_id, task, diagnosis in items:
        prompt = build_prompt(tokenizer, task, diagnosis)
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        by_task.setdefault(task, []).append((length, case_id, prompt))
    for task, entries in by_task.items():
        entries.sort(key=lambda e: (-e[0], e[1]))
        for start in range(0, len(entries), batch_size):
            yield task, entries[start:start + batch_size]


def generate_batch(loaded: LoadedModel, prompts: list[str], max_new_tokens: int,
                   adapter: str | None) -> list[tuple[str, int, int]]:
    """(raw text, prompt tokens, new tokens up to EOS) for each prompt, greedy."""
    import torch

    tokenizer = loaded.tokenizer
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    encoded = {k: v.to(loaded.model.device) for k, v in encoded.items()}
    with using_adapter(loaded, adapter) as model, torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = output[:, encoded["input_ids"].shape[1]:].cpu()
    results = []
    for i, tokens in enumerate(new.tolist()):
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id) + 1]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        results.append((text, int(encoded["attention_mask"][i].sum()), len(tokens)))
    return results


def run_generation(db_path: str | Path, run_id: int, loaded: LoadedModel, adapter: str | None = None,
                   batch_size: int = 16, progress: Callable[[Progress], None] | None = None,
                   limit: int | None = None) -> Progress:
    """Generate every missing output of a run; each batch is stored in its own transaction."""
    db_path = Path(db_path)
    with opened(db_path) as conn:
        run = conn.execute("SELECT decoding FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
        items = pending_items(conn, run_id)
    max_new = json.loads(run["decoding"])["max_new_tokens"]
    items = items[:limit] if limit is not None else items
    _set_status(db_path, run_id, "running")
    started, done, new_tokens = time.monotonic(), 0, 0
    state = Progress(0, len(items), 0.0, 0)
    try:
        for task, batch in _batches(loaded, items, batch_size):
            batch_started = time.monotonic()
            outputs = generate_batch(loaded, [prompt for _, _, prompt in batch], max_new[task], adapter)
            per_row = (time.monotonic() - batch_started) / len(batch)
            with opened(db_path) as conn, transaction(conn):
                conn.executemany(
                    "INSERT OR IGNORE INTO generations (run_id, case_id, task, template_id, raw_text, answer, "
                    "prompt_tokens, output_tokens, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, case_id, task, TEMPLATE_IDS[task], text, extract_answer(task, text),
                      n_prompt, n_new, per_row)
                     for (_, case_id, _), (text, n_prompt, n_new) in zip(batch, outputs)])
            done += len(batch)
            new_tokens += sum(n for _, _, n in outputs)
            state = Progress(done, len(items), time.monotonic() - started, new_tokens)
            if progress:
                progress(state)
    except KeyboardInterrupt:
        _set_status(db_path, run_id, "cancelled", "interrupted; rerun the same command to resume")
        raise
    except Exception as exc:
        _set_status(db_path, run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    with opened(db_path) as conn:
        complete = not pending_items(conn, run_id)
    _set_status(db_path, run_id, "finished" if complete else "queued")
    return state
