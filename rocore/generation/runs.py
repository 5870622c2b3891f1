"""Generation runs: a model (with or without its adapter) answers every case of a split part, stored row by row.

A run is a row in `generation_runs`; each answer is a row in `generations`, written a batch at a
time, so an interrupted run resumes where it stopped and a rerun generates only what is missing.
Prompts are grouped by task, sorted by length and left-padded, so a batch wastes little on padding.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rocore.store.audit import audit, timestamp
from rocore.store.db import NOW, opened, transaction
from rocore.store.jobs import mark_dead_runs, refuse_if_running_elsewhere
from rocore.generation.openai_compatible import ServedModel, ServerError, check_server, complete_all, Server
from rocore.model.loading import (LoadedModel, ModelError, adapter_for_generation, check_adapter_dir,
                                  check_model_dir, resolve_device, using_adapter)
from rocore.model.answers import extract_answer
from rocore.model.prompts import (TASKS, TaskError, build_prompt, check_tasks, end_of_turn, resolve_prompt_format,
                                  template_id)
from rocore.data.splits import SplitError, split_case_ids, split_by_name_or_newest

# Per-task limits on new tokens, from real chat answers (SmolLM2-135M-Instruct, docs/real-models.md:
# p99 of the answers that ended on their own was 140 regimen, 72 modality, 129 ICD-10 tokens) plus a
# margin: a limit must not cut an answer that would have ended by itself.
DEFAULT_MAX_NEW_TOKENS = {"regimen": 256, "modality": 96, "icd10": 160}
# Where a base model given the plain layout starts writing the next "### ..." section.
PLAIN_STOP = "\n###"


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


class GenerationRequestError(ValueError):
    """A generation that cannot start; `problems` names each one by the setting to change."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class GenerationRequest:
    """What a checked request resolved to."""

    split_id: int
    tasks: list[str]
    prompt_format: str


def check_generation_request(conn: sqlite3.Connection, model: str | Path, adapter: str | Path | None,
                             split_name: str | None, part: str, tasks: list[str] | str,
                             prompt_format: str = "auto", device: str = "auto",
                             max_new_tokens: dict[str, int] | None = None,
                             server: Server | None = None) -> GenerationRequest:
    """Every check a generation run makes that needs no model weights, so that the Generate page refuses a
    request at once instead of launching a process that fails after loading the model, and the command
    line refuses it the same way. split_name None: the newest split. server: the run goes through it
    (the model folder still gives the tokenizer and prompt format), so it must answer. Raises
    GenerationRequestError listing every problem."""
    from transformers import AutoConfig, AutoTokenizer

    problems = []
    if not tasks:
        problems.append("Tasks: choose at least one task")
    else:
        try:
            tasks = check_tasks(tasks)
            unknown = [task for task in max_new_tokens or {} if task not in tasks]
            if unknown:
                problems.append(f"Max new tokens: {', '.join(unknown)} is not among the tasks")
        except TaskError as exc:
            problems.append(f"Tasks: {exc}")
    split_id = None
    try:
        split_id, split_name = split_by_name_or_newest(conn, split_name)
        if not split_case_ids(conn, split_id, part):
            problems.append(f"Part: split '{split_name}' has no cases in its {part} part")
    except SplitError as exc:
        problems.append(f"Split: {exc}")
    try:
        if server is None:
            resolve_device(device)
        else:
            check_server(server)
    except ModelError as exc:
        problems.append(f"Device: {exc}")
    except ServerError as exc:
        problems.append(f"Server: {exc}")
    resolved = None
    try:
        if not model:
            raise ModelError("choose a model directory")
        check_model_dir(Path(model))
        try:
            AutoConfig.from_pretrained(model)
            tokenizer = AutoTokenizer.from_pretrained(model)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{model} could not be loaded: {exc}") from exc
    except ModelError as exc:
        problems.append(f"Base model directory: {exc}")
    else:
        if adapter:
            try:
                check_adapter_dir(adapter, model)
            except ModelError as exc:
                problems.append(f"LoRA adapter: {exc}")
        try:
            resolved = resolve_prompt_format(tokenizer, model, prompt_format, adapter)
        except (ModelError, ValueError) as exc:
            problems.append(f"Prompt format: {exc}")
    if problems:
        raise GenerationRequestError(problems)
    return GenerationRequest(split_id, tasks, resolved)


# What a served run records as its quantization: the server chose how to hold the weights.
SERVED_QUANTIZATION = "served"


def get_or_create_run(conn: sqlite3.Connection, base_model_id: int, adapter_model_id: int | None,
                      split_id: int, part: str, tasks: list[str], quantization: str,
                      decoding: dict, prompt_format: str, actor: str = "cli",
                      client: str | None = None, server: Server | None = None) -> tuple[int, bool]:
    """(run id, resumed): a run with the same model, data, settings, prompt format and backend (local,
    or the same served model name) is resumed, not repeated. A served run resumed from another URL (the
    server moved) records the new one."""
    tasks = check_tasks(tasks)
    backend, served_model = ("openai", server.model) if server else ("local", None)
    key = (base_model_id, adapter_model_id, split_id, part, json.dumps(tasks), quantization,
           json.dumps(decoding, sort_keys=True), prompt_format, backend, served_model)
    with transaction(conn):
        row = conn.execute(
            "SELECT run_id, server_url FROM generation_runs WHERE base_model_id = ? AND adapter_model_id IS ? AND "
            "split_id = ? AND part = ? AND tasks = ? AND quantization = ? AND decoding = ? AND prompt_format = ? "
            "AND backend = ? AND served_model IS ? ORDER BY run_id DESC LIMIT 1", key).fetchone()
        if row:
            if server and row["server_url"] != server.url:
                conn.execute("UPDATE generation_runs SET server_url = ? WHERE run_id = ?", (server.url, row[0]))
                audit(conn, actor, "move-generation-run", "generation_runs", row[0],
                      {"from": row["server_url"], "to": server.url}, client)
            return row[0], True
        run_id = conn.execute(
            "INSERT INTO generation_runs (base_model_id, adapter_model_id, split_id, part, tasks, "
            "quantization, decoding, prompt_format, backend, served_model, server_url) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*key, server and server.url)).lastrowid
        audit(conn, actor, "create-generation-run", "generation_runs", run_id,
              {"base_model_id": base_model_id, "adapter_model_id": adapter_model_id, "split_id": split_id,
               "part": part, "tasks": tasks, "quantization": quantization, "decoding": decoding,
               "prompt_format": prompt_format, "backend": backend, "served_model": served_model,
               "server_url": server and server.url}, client)
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


# The audit action of each status a run ends in; 'queued' is a run stopped at its limit with outputs pending.
_END_ACTIONS = {"finished": "finish-generation-run", "failed": "fail-generation-run",
                "cancelled": "cancel-generation-run", "queued": "pause-generation-run"}


def _set_status(db_path: Path, run_id: int, status: str, error: str | None, actor: str, client: str | None,
                detail: dict) -> None:
    """Set a run's status and audit it in one transaction. Running is a start, or a resume of a run begun
    before; its audit row names this process, which is how the page finds the run of a process it launched."""
    with opened(db_path) as conn, transaction(conn):
        if status == "running":
            refuse_if_running_elsewhere(conn, "generation_runs", run_id)
            begun = conn.execute(
                "SELECT status != 'queued' OR EXISTS (SELECT 1 FROM generations g WHERE g.run_id = ?) "
                "FROM generation_runs WHERE run_id = ?", (run_id, run_id)).fetchone()[0]
            action = "resume-generation-run" if begun else "start-generation-run"
            detail = {**detail, "pid": os.getpid()}
        else:
            action = _END_ACTIONS[status]
        conn.execute(
            "UPDATE generation_runs SET status = ?, error = ?, pid = ?, finished_at = CASE WHEN ? IN "
            f"('finished', 'failed', 'cancelled') THEN {NOW} END WHERE run_id = ?",
            (status, error, os.getpid() if status == "running" else None, status, run_id))
        audit(conn, actor, action, "generation_runs", run_id, detail, client)


def run_started_by(conn: sqlite3.Connection, pid: int, since: float) -> int | None:
    """The run a process launched at `since` (seconds since the epoch) started or resumed, from the audit
    log; None while it has not (it loads the model first) or if it ended before."""
    row = conn.execute(
        "SELECT entity_id FROM audit_log WHERE entity = 'generation_runs' AND action IN "
        "('start-generation-run', 'resume-generation-run') AND json_extract(detail, '$.pid') = ? AND at >= ? "
        "ORDER BY audit_id DESC LIMIT 1", (pid, timestamp(since))).fetchone()
    return None if row is None else int(row[0])


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
        served = f", served as {r['served_model']} by {r['server_url']}" if r["backend"] == "openai" else ""
        label = (f"run {r['run_id']}: {Path(r['base_path']).name}, {kind}{served}, "
                 f"{r['prompt_format'] or 'unrecorded'} format, {r['split_name']}/{r['part']}, "
                 f"{r['done']:,} outputs ({r['status']})")
        runs.append({**dict(r), "label": label})
    return runs


def matched_run_pairs(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    """{task: (base run, fine-tuned run)}: what a comparison should pair when none is named.

    The newest fine-tuned run sets the model, adapter, split and part. For each task, the newest of
    that adapter's runs over them which generated the task is paired with the newest base-only run
    of the same base model, split, part and prompt format which generated it too, so that a task
    generated in a run of its own is still paired, and the difference measures the fine-tune, not
    the prompt layout. A task with no such base run is left out.
    """
    anchor = conn.execute("SELECT base_model_id, adapter_model_id, split_id, part FROM generation_runs "
                          "WHERE adapter_model_id IS NOT NULL ORDER BY run_id DESC LIMIT 1").fetchone()
    if anchor is None:
        return {}
    runs = conn.execute(
        "SELECT run_id, adapter_model_id, tasks, prompt_format FROM generation_runs WHERE base_model_id = ? "
        "AND (adapter_model_id = ? OR adapter_model_id IS NULL) AND split_id = ? AND part = ? "
        "ORDER BY run_id DESC", tuple(anchor)).fetchall()
    pairs = {}
    for task in TASKS:
        with_task = [r for r in runs if task in json.loads(r["tasks"])]
        tuned = next((r for r in with_task if r["adapter_model_id"] is not None), None)
        base = tuned and next((r for r in with_task if r["adapter_model_id"] is None
                               and r["prompt_format"] == tuned["prompt_format"]), None)
        if base is not None:
            pairs[task] = (base["run_id"], tuned["run_id"])
    return pairs


def suggested_run_pair(conn: sqlite3.Connection) -> tuple[int, int] | None:
    """The pair a page offers first: the matched pair of the first task that has one (regimen before
    the others), else the two newest runs."""
    matched = matched_run_pairs(conn)
    if matched:
        return next(iter(matched.values()))
    newest = [r[0] for r in conn.execute("SELECT run_id FROM generation_runs ORDER BY run_id DESC LIMIT 2")]
    return (newest[1], newest[0]) if len(newest) == 2 else None


def _batches(loaded: LoadedModel | ServedModel, items: list[tuple[str, str, str]], batch_size: int, prompt_format: str):
    """Batches of one task each, longest prompts first (an out-of-memory error shows at once)."""
    tokenizer = loaded.tokenizer
    by_task: dict[str, list[tuple[int, str, str]]] = {}
    for case_id, task, diagnosis in items:
        prompt = build_prompt(tokenizer, task, diagnosis, prompt_format)
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        by_task.setdefault(task, []).append((length, case_id, prompt))
    for task, entries in by_task.items():
        entries.sort(key=lambda e: (-e[0], e[1]))
        for start in range(0, len(entries), batch_size):
            yield task, entries[start:start + batch_size]


@dataclass(frozen=True)
class Stops:
    """What ends an answer: stop tokens, and stop strings for markers that are not one token."""

    token_ids: tuple[int, ...]
    strings: tuple[str, ...] = ()


def configured_stop_ids(loaded: LoadedModel | ServedModel) -> list[int]:
    """The stop tokens of the model's generation config (what a server stops on by itself)."""
    if isinstance(loaded, ServedModel):
        return loaded.configured_stop_ids
    configured = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    return [configured] if isinstance(configured, int) else list(configured or [])


def stops_for(loaded: LoadedModel | ServedModel, prompt_format: str | None) -> Stops:
    """The model's own stop tokens merged, never replaced: generation_config.eos_token_id (an int or a
    list: Llama-3 Instruct lists <|eot_id|> beside <|end_of_text|>), the tokenizer's EOS (what a plain
    fine-tune ends its answers with), and for chat the template's end-of-turn marker (<|im_end|>,
    <end_of_turn>), as a stop string where it is not one token. The plain layout also stops where a
    base model starts a next section (PLAIN_STOP), which is where its answer ends."""
    tokenizer = loaded.tokenizer
    ids = configured_stop_ids(loaded)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    strings = []
    marker = end_of_turn(tokenizer) if prompt_format == "chat" else None
    if marker:
        marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(marker_ids) == 1:
            ids += marker_ids
        else:
            strings.append(marker)
    if prompt_format == "plain":
        strings.append(PLAIN_STOP)
    return Stops(tuple(dict.fromkeys(ids)), tuple(strings))


def generate_batch(loaded: LoadedModel, prompts: list[str], max_new_tokens: int,
                   adapter: str | None, stops: Stops | None = None) -> list[tuple[str, int, int, str]]:
    """(raw text, prompt tokens, new tokens up to the stop, finish reason) for each prompt, greedy.
    The finish reason is `stop` when a stop token or string ended the answer, else `length` (cut at
    max_new_tokens). stops: default, the model's own stop tokens alone."""
    import torch

    tokenizer = loaded.tokenizer
    stops = stops or stops_for(loaded, None)
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    encoded = {k: v.to(loaded.model.device) for k, v in encoded.items()}
    stopping = {"stop_strings": list(stops.strings), "tokenizer": tokenizer} if stops.strings else {}
    with using_adapter(loaded, adapter) as model, torch.inference_mode():
        output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=list(stops.token_ids), **stopping)
    new = output[:, encoded["input_ids"].shape[1]:].cpu()
    results = []
    for i, tokens in enumerate(new.tolist()):
        end = next((j for j, token in enumerate(tokens) if token in stops.token_ids), None)
        reason = "length" if end is None else "stop"
        tokens = tokens if end is None else tokens[:end + 1]
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((text.index(s) for s in stops.strings if s in text), default=None)
        if cut is not None:
            text, reason = text[:cut], "stop"
            while tokens and tokens[-1] == tokenizer.pad_token_id:  # a row that ended on a stop string
                tokens.pop()
        results.append((text, int(encoded["attention_mask"][i].sum()), len(tokens), reason))
    return results


def generate_fitting(loaded: LoadedModel, prompts: list[str], max_new_tokens: int, adapter: str | None,
                     stops: Stops, size: int) -> tuple[list[tuple[str, int, int, str]], int]:
    """generate_batch over `prompts` in sub-batches of `size`, halving `size` and retrying whenever the
    GPU runs out of memory, so a batch size that was too large for the longest prompts slows a run
    instead of ending it. Returns the outputs and the size that fitted, for the next batches."""
    import torch

    outputs: list[tuple[str, int, int, str]] = []
    while len(outputs) < len(prompts):
        chunk = prompts[len(outputs):len(outputs) + size]
        try:
            outputs += generate_batch(loaded, chunk, max_new_tokens, adapter, stops)
        except torch.cuda.OutOfMemoryError:
            if size == 1:
                raise
            size //= 2
            torch.cuda.empty_cache()
    return outputs, size


def _store_outputs(db_path: Path, run_id: int, tokenizer, prompt_format: str, task: str,
                   rows: list[tuple[str, str, tuple[str, int, int, float, str]]]) -> None:
    """(case id, prompt, (text, prompt tokens, new tokens, seconds, finish reason)) rows in one transaction."""
    with opened(db_path) as conn, transaction(conn):
        conn.executemany(
            "INSERT OR IGNORE INTO generations (run_id, case_id, task, template_id, raw_text, answer, "
            "prompt_tokens, output_tokens, seconds, finish_reason, prompt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, case_id, task, template_id(tokenizer, task, prompt_format), text, extract_answer(task, text),
              n_prompt, n_new, seconds, reason, prompt)
             for case_id, prompt, (text, n_prompt, n_new, seconds, reason) in rows])


def _answer_locally(loaded: LoadedModel, adapter: str | None, stops: Stops, batch_size: int):
    """answer(prompts, max new tokens) -> outputs, through transformers in this process; the batch size
    that fitted the GPU carries over from batch to batch."""
    fitting = batch_size

    def answer(prompts: list[str], max_new_tokens: int, store_partial) -> list[tuple[str, int, int, float, str]]:
        nonlocal fitting
        started = time.monotonic()
        outputs, fitting = generate_fitting(loaded, prompts, max_new_tokens, adapter, stops, fitting)
        per_row = (time.monotonic() - started) / len(prompts)
        return [(text, n_prompt, n_new, per_row, reason) for text, n_prompt, n_new, reason in outputs]
    return answer


def _answer_served(served: ServedModel, stops: Stops):
    """answer(prompts, max new tokens, store_partial) -> outputs, from the server; each output's seconds
    are its own request's. A stop token the server would not stop on by itself is asked for by id."""
    extra_ids = sorted(set(stops.token_ids) - served.server_stop_ids)

    def answer(prompts: list[str], max_new_tokens: int, store_partial) -> list[tuple[str, int, int, float, str]]:
        def row(c):
            return (c.text, c.prompt_tokens, c.output_tokens, c.seconds, c.finish_reason)

        completions = complete_all(served.server, served.tokenizer, prompts, max_new_tokens, stops.strings,
                                   extra_ids, stored=lambda done: store_partial([(i, row(c)) for i, c in done]))
        return [row(c) for c in completions]
    return answer


def run_generation(db_path: str | Path, run_id: int, loaded: LoadedModel | ServedModel, adapter: str | None = None,
                   batch_size: int = 16, progress: Callable[[Progress], None] | None = None,
                   limit: int | None = None, actor: str = "cli", client: str | None = None) -> Progress:
    """Generate every missing output of a run, locally (`loaded` a LoadedModel, `adapter` the name of the
    attached adapter to use, merged into the weights for the run where adapter_for_generation can) or
    through a server (a ServedModel, whose server already serves the adapter or not); each batch is
    stored in its own transaction, and a server's failure stores the answers it gave first. The start
    and the end are audited as `actor`."""
    db_path = Path(db_path)
    served = isinstance(loaded, ServedModel)
    with opened(db_path) as conn:
        run = conn.execute("SELECT decoding, prompt_format FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
        items = pending_items(conn, run_id)
    max_new = json.loads(run["decoding"])["max_new_tokens"]
    if run["prompt_format"] is None:
        raise ValueError(f"run {run_id} was made before prompt formats were recorded; start a new run")
    adapter_path = loaded.adapter_path if served else (loaded.adapters.get(adapter) if adapter else None)
    prompt_format = resolve_prompt_format(loaded.tokenizer, loaded.path, run["prompt_format"], adapter_path)
    stops = stops_for(loaded, prompt_format)
    answer = _answer_served(loaded, stops) if served else _answer_locally(loaded, adapter, stops, batch_size)
    items = items[:limit] if limit is not None else items
    where = ({"server": loaded.server.url, "served_model": loaded.server.model,
              "concurrency": loaded.server.concurrency} if served else {"device": loaded.device})
    _set_status(db_path, run_id, "running", None, actor, client,
                {"outputs_to_generate": len(items), "batch_size": batch_size, **where})
    started, done, new_tokens, merged = time.monotonic(), 0, 0, None

    def spent() -> dict:
        """The end's audit detail: what this process stored, how long it took, and whether a local
        adapter was merged into the weights (in bf16 that can move a greedy near-tie)."""
        return {"generated": done, "new_tokens": new_tokens, "seconds": round(time.monotonic() - started, 1),
                **({"adapter_merged": merged} if merged is not None else {})}

    state = Progress(0, len(items), 0.0, 0)
    try:
        with contextlib.nullcontext() if served or adapter is None else adapter_for_generation(loaded, adapter) \
                as merged:
            for task, batch in _batches(loaded, items, batch_size, prompt_format):
                def store(outputs, batch=batch, task=task) -> None:
                    nonlocal done, new_tokens
                    _store_outputs(db_path, run_id, loaded.tokenizer, prompt_format, task,
                                   [(batch[i][1], batch[i][2], output) for i, output in outputs])
                    done += len(outputs)
                    new_tokens += sum(output[2] for _, output in outputs)

                store(list(enumerate(answer([prompt for _, _, prompt in batch], max_new[task], store))))
                state = Progress(done, len(items), time.monotonic() - started, new_tokens)
                if progress:
                    progress(state)
    except KeyboardInterrupt:
        _set_status(db_path, run_id, "cancelled", "interrupted; rerun the same command to resume", actor, client,
                    spent())
        raise
    except Exception as exc:  # the audit row names the error's type only: a message may quote a prompt
        _set_status(db_path, run_id, "failed", f"{type(exc).__name__}: {exc}", actor, client,
                    {**spent(), "error": type(exc).__name__})
        raise
    with opened(db_path) as conn:
        pending = len(pending_items(conn, run_id))
    _set_status(db_path, run_id, "queued" if pending else "finished", None, actor, client,
                {**spent(), "pending": pending})
    return state
