"""Generation runs against a real database and a real (tiny) model."""

import json

import pytest

from conftest import save_tiny_llama
from rocore.store.db import opened
from rocore.generation.runs import (
    GenerationRequestError,
    check_generation_request,
    decoding_settings,
    generate_batch,
    get_or_create_run,
    list_runs,
    matched_run_pairs,
    pending_items,
    run_generation,
    run_started_by,
    suggested_run_pair,
)
from rocore.store.registry import register_model
from rocore.model.loading import attach_adapter, load_model
from rocore.model.prompts import TASKS, build_prompt, template_id
from rocore.data.splits import split_case_ids

DECODING = decoding_settings({"regimen": 10, "modality": 4, "icd10": 4})


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tiny_adapter_dir):
    model = load_model(tiny_model_dir, "fp32")
    attach_adapter(model, tiny_adapter_dir, "finetuned")
    return model


def new_run(db_path, split_id, model, adapter_dir=None, decoding=DECODING):
    with opened(db_path) as conn:
        base_id = register_model(conn, model.path, "base")
        adapter_id = register_model(conn, adapter_dir, "adapter", base_id) if adapter_dir else None
        return get_or_create_run(conn, base_id, adapter_id, split_id, "test", list(TASKS), model.quantization, decoding,
                                 "plain")


def test_batched_generation_equals_one_by_one_for_greedy(loaded, synthetic_cases):
    prompts = [build_prompt(loaded.tokenizer, "regimen", c["diagnosis"], "plain") for c in synthetic_cases[:6]]
    for adapter in (None, "finetuned"):
        batched = generate_batch(loaded, prompts, 12, adapter)
        single = [generate_batch(loaded, [p], 12, adapter)[0] for p in prompts]
        assert batched == single


def test_a_run_stores_every_case_and_task_with_its_details(split_db, loaded):
    db_path, split_id = split_db
    run_id, resumed = new_run(db_path, split_id, loaded)
    assert not resumed
    seen = []
    final = run_generation(db_path, run_id, loaded, batch_size=8, progress=seen.append)
    with opened(db_path) as conn:
        test_ids = split_case_ids(conn, split_id, "test")
        rows = conn.execute("SELECT * FROM generations WHERE run_id = ?", (run_id,)).fetchall()
        run = conn.execute("SELECT * FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
    assert len(rows) == len(test_ids) * 3 == final.done == final.total
    assert {(r["case_id"], r["task"]) for r in rows} == {(c, t) for c in test_ids for t in TASKS}
    assert all(r["template_id"] == template_id(loaded.tokenizer, r["task"], "plain") and r["prompt_tokens"] > 20 and
               0 < r["output_tokens"] <= json.loads(run["decoding"])["max_new_tokens"][r["task"]] and
               r["seconds"] > 0 for r in rows)
    assert run["status"] == "finished" and run["finished_at"]
    assert json.loads(run["decoding"]) == DECODING
    assert [p.done for p in seen] == sorted(p.done for p in seen) and seen[-1].eta_s == 0


def test_an_interrupted_run_resumes_with_only_the_missing_rows(split_db, loaded):
    db_path, split_id = split_db
    run_id, _ = new_run(db_path, split_id, loaded)

    def interrupt_after_two_batches(progress):
        if progress.done >= 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_generation(db_path, run_id, loaded, batch_size=4, progress=interrupt_after_two_batches)
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM generations WHERE run_id = ?", (run_id,)).fetchone()[0] == 8
        status = conn.execute("SELECT status, error FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
        assert status["status"] == "cancelled" and "resume" in status["error"]
        first_rows = {tuple(r) for r in conn.execute("SELECT case_id, task, raw_text, created_at FROM generations")}
        remaining = len(pending_items(conn, run_id))

    again, resumed = new_run(db_path, split_id, loaded)
    assert (again, resumed) == (run_id, True)
    final = run_generation(db_path, run_id, loaded, batch_size=4)
    assert final.total == remaining
    with opened(db_path) as conn:
        assert first_rows <= {tuple(r) for r in conn.execute("SELECT case_id, task, raw_text, created_at FROM generations")}
        assert pending_items(conn, run_id) == []
        assert conn.execute("SELECT status FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()[0] == "finished"
    assert run_generation(db_path, run_id, loaded).total == 0


def test_base_and_finetuned_runs_pair_up_case_by_case(split_db, loaded, tiny_adapter_dir):
    db_path, split_id = split_db
    base_run, _ = new_run(db_path, split_id, loaded)
    tuned_run, _ = new_run(db_path, split_id, loaded, tiny_adapter_dir)
    assert base_run != tuned_run
    run_generation(db_path, base_run, loaded, adapter=None)
    run_generation(db_path, tuned_run, loaded, adapter="finetuned")
    with opened(db_path) as conn:
        pairs = conn.execute(
            "SELECT b.raw_text AS base, f.raw_text AS tuned FROM generations b JOIN generations f "
            "ON b.case_id = f.case_id AND b.task = f.task WHERE b.run_id = ? AND f.run_id = ?",
            (base_run, tuned_run)).fetchall()
        n_test = len(split_case_ids(conn, split_id, "test"))
    assert len(pairs) == n_test * 3
    assert sum(p["base"] != p["tuned"] for p in pairs) > len(pairs) / 2


def test_a_finetuned_run_merges_its_adapter_and_stores_what_the_unmerged_adapter_generates(split_db, loaded,
                                                                                           tiny_adapter_dir):
    db_path, split_id = split_db
    merged_run, _ = new_run(db_path, split_id, loaded, tiny_adapter_dir)
    run_generation(db_path, merged_run, loaded, adapter="finetuned", batch_size=8)
    with opened(db_path) as conn:
        stored = {(r["case_id"], r["task"]): (r["raw_text"], r["output_tokens"], r["finish_reason"])
                  for r in conn.execute("SELECT * FROM generations WHERE run_id = ?", (merged_run,))}
        prompts = {(r["case_id"], r["task"]): r["prompt"]
                   for r in conn.execute("SELECT * FROM generations WHERE run_id = ?", (merged_run,))}
    unmerged = {key: generate_batch(loaded, [prompt], DECODING["max_new_tokens"][key[1]], "finetuned")[0]
                for key, prompt in list(prompts.items())[:12]}
    assert {key: stored[key] for key in unmerged} == {key: (t, n, r) for key, (t, _, n, r) in unmerged.items()}
    assert loaded.merged is None, "the base's own weights are back after the run"
    ended = [r["detail"] for r in audit_rows(db_path) if r["action"] == "finish-generation-run"]
    assert ended[-1]["adapter_merged"] is True


def test_runs_are_matched_per_task_with_a_base_run_of_the_same_model_part_and_format(split_db):
    """The real CLI case: a regimen-only fine-tuned run and a modality/ICD-10 one, each needing its own base run."""
    db_path, split_id = split_db
    with opened(db_path) as conn:
        base_id = register_model(conn, "/models/base", "base")
        other_base = register_model(conn, "/models/other", "base")
        adapter = register_model(conn, "/models/adapter", "adapter", base_id)
        older_adapter = register_model(conn, "/models/adapter-1", "adapter", base_id)

        def run(model, tuned, tasks, prompt_format="chat", part="test"):
            return get_or_create_run(conn, model, tuned, split_id, part, tasks, "fp32", {}, prompt_format)[0]

        assert matched_run_pairs(conn) == {} and suggested_run_pair(conn) is None
        base_classes = run(base_id, None, ["modality", "icd10"])
        base_regimen = run(base_id, None, ["regimen"])
        run(base_id, None, ["regimen"], "plain")  # newer, but in another format
        run(other_base, None, list(TASKS))  # another base model
        run(base_id, None, list(TASKS), part="validation")  # another part
        assert matched_run_pairs(conn) == {}
        run(base_id, older_adapter, list(TASKS))  # an older fine-tune is not mixed in
        tuned_regimen = run(base_id, adapter, ["regimen"])
        assert matched_run_pairs(conn) == {"regimen": (base_regimen, tuned_regimen)}
        tuned_classes = run(base_id, adapter, ["modality", "icd10"])
        assert matched_run_pairs(conn) == {"regimen": (base_regimen, tuned_regimen),
                                           "modality": (base_classes, tuned_classes),
                                           "icd10": (base_classes, tuned_classes)}
        assert suggested_run_pair(conn) == (base_regimen, tuned_regimen)


def test_other_decoding_settings_make_a_new_run(split_db, loaded):
    db_path, split_id = split_db
    first, _ = new_run(db_path, split_id, loaded)
    second, resumed = new_run(db_path, split_id, loaded, decoding=decoding_settings({"regimen": 20}))
    assert second != first and not resumed


def test_a_run_another_live_process_is_generating_is_refused(split_db, loaded):
    import subprocess

    from rocore.store.jobs import RunBusy

    db_path, split_id = split_db
    run_id, _ = new_run(db_path, split_id, loaded)
    other = subprocess.Popen(["sleep", "60"])  # the process of a first click on Start
    try:
        with opened(db_path) as conn:
            conn.execute("UPDATE generation_runs SET status = 'running', pid = ? WHERE run_id = ?", (other.pid, run_id))
        with pytest.raises(RunBusy, match=f"run {run_id} is already running \\(process {other.pid}\\)"):
            run_generation(db_path, run_id, loaded, batch_size=4)
        with opened(db_path) as conn:
            row = conn.execute("SELECT status, pid FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
            assert tuple(row) == ("running", other.pid)
            assert conn.execute("SELECT count(*) FROM generations WHERE run_id = ?", (run_id,)).fetchone()[0] == 0
    finally:
        other.kill()
        other.wait()


def test_jobs_registering_one_model_at_once_get_one_id(db_path, tmp_path):
    import threading

    for attempt in range(20):
        path, ids, errors = tmp_path / f"model-{attempt}", [], []

        def register(path=path, ids=ids, errors=errors):
            try:
                with opened(db_path) as conn:
                    ids.append(register_model(conn, path, "base"))
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=register) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(set(ids)) == 1, f"model {attempt}"


def audit_rows(db_path, entity="generation_runs"):
    with opened(db_path) as conn:
        return [{**dict(r), "detail": json.loads(r["detail"])} for r in conn.execute(
            "SELECT actor, action, entity_id, detail, client FROM audit_log WHERE entity = ? ORDER BY audit_id",
            (entity,))]


def assert_no_case_text(db_path):
    with opened(db_path) as conn:
        texts = [r[0] for r in conn.execute("SELECT diagnosis FROM cases UNION SELECT regimen FROM cases")]
        log = " ".join(r[0] for r in conn.execute("SELECT detail FROM audit_log"))
    assert not [t for t in texts if t in log]


def test_a_run_is_audited_from_creation_through_each_start_to_its_end(split_db, loaded):
    import os
    import time

    db_path, split_id = split_db
    since = time.time()
    run_id, _ = new_run(db_path, split_id, loaded)
    created = audit_rows(db_path)
    assert [(r["action"], r["entity_id"], r["actor"]) for r in created] == [
        ("create-generation-run", str(run_id), "cli")]
    assert created[0]["detail"] == {"base_model_id": 1, "adapter_model_id": None, "split_id": split_id, "part": "test",
                                    "tasks": list(TASKS), "quantization": "fp32", "decoding": DECODING,
                                    "prompt_format": "plain", "backend": "local", "served_model": None,
                                    "server_url": None}

    def interrupt(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_generation(db_path, run_id, loaded, batch_size=4, progress=interrupt, actor="alice", client="web x")
    run_generation(db_path, run_id, loaded, batch_size=4, limit=4, actor="alice", client="web x")
    final = run_generation(db_path, run_id, loaded, batch_size=8, actor="alice", client="web x")
    rows = audit_rows(db_path)[1:]
    assert [r["action"] for r in rows] == ["start-generation-run", "cancel-generation-run", "resume-generation-run",
                                           "pause-generation-run", "resume-generation-run", "finish-generation-run"]
    assert {(r["actor"], r["client"], r["entity_id"]) for r in rows} == {("alice", "web x", str(run_id))}
    start, cancel, _, pause, resume, finish = (r["detail"] for r in rows)
    assert start == {"outputs_to_generate": final.total + 8, "batch_size": 4, "device": "cpu", "pid": os.getpid()}
    assert cancel["generated"] == 4 and pause == {**pause, "generated": 4, "pending": final.total}
    assert resume["outputs_to_generate"] == final.total
    assert finish["generated"] == final.done == final.total and finish["pending"] == 0 and finish["new_tokens"] > 0
    with opened(db_path) as conn:
        assert run_started_by(conn, os.getpid(), since) == run_id
        assert run_started_by(conn, os.getpid(), time.time() + 1) is None, "an older process with the same id"
    assert_no_case_text(db_path)


def test_a_failed_run_is_audited_with_the_type_of_its_error(split_db, loaded):
    db_path, split_id = split_db
    run_id, _ = new_run(db_path, split_id, loaded)

    def fail(progress):
        raise RuntimeError("a message that could quote a prompt")

    with pytest.raises(RuntimeError):
        run_generation(db_path, run_id, loaded, batch_size=4, progress=fail)
    failed = audit_rows(db_path)[-1]
    assert (failed["action"], failed["detail"]["error"], failed["detail"]["generated"]) == \
        ("fail-generation-run", "RuntimeError", 4)
    with opened(db_path) as conn:
        assert conn.execute("SELECT error FROM generation_runs").fetchone()[0] == \
            "RuntimeError: a message that could quote a prompt"


def test_a_request_resolves_to_the_split_tasks_and_prompt_format_it_will_use(split_db, tiny_model_dir,
                                                                             tiny_adapter_dir):
    db_path, split_id = split_db
    with opened(db_path) as conn:
        request = check_generation_request(conn, tiny_model_dir, tiny_adapter_dir, None, "test", "icd10,modality")
    assert (request.split_id, request.tasks, request.prompt_format) == (split_id, ["modality", "icd10"], "plain")


def test_a_request_that_cannot_run_is_refused_with_every_problem_before_any_weights_load(split_db, tmp_path,
                                                                                       tiny_model_dir):
    db_path, _ = split_db
    with opened(db_path) as conn:
        with pytest.raises(GenerationRequestError) as refused:
            check_generation_request(conn, tmp_path / "nope", None, "nope", "test", [], device="nowhere")
        assert refused.value.problems == [
            "Tasks: choose at least one task", "Split: no split named 'nope' (splits: main)",
            "Device: unknown device 'nowhere'; choose one of auto, cpu, cuda",
            f"Base model directory: model directory {tmp_path / 'nope'} does not exist"]
        conn.execute("DELETE FROM split_cases WHERE part = 'validation'")
        with pytest.raises(GenerationRequestError) as refused:
            check_generation_request(conn, tiny_model_dir, None, "main", "validation", ["regimen"],
                                     prompt_format="chat", max_new_tokens={"icd10": 5})
        assert refused.value.problems == [
            "Max new tokens: icd10 is not among the tasks", "Part: split 'main' has no cases in its validation part",
            "Prompt format: the chat prompt format needs a chat template, and this model's tokenizer has none: "
            "use the plain prompt format"]
    (tmp_path / "no-tokenizer").mkdir()
    (tmp_path / "no-tokenizer" / "config.json").write_bytes((tiny_model_dir / "config.json").read_bytes())
    with opened(db_path) as conn, pytest.raises(GenerationRequestError, match="no-tokenizer could not be loaded"):
        check_generation_request(conn, tmp_path / "no-tokenizer", None, "main", "test", ["regimen"])


def test_an_adapter_is_checked_against_the_base_before_either_loads(split_db, tmp_path, tiny_tokenizer,
                                                                    tiny_adapter_dir):
    db_path, _ = split_db
    other = save_tiny_llama(tmp_path / "wider", tiny_tokenizer, hidden_size=96)
    with opened(db_path) as conn:
        with pytest.raises(GenerationRequestError, match="LoRA adapter: adapter .* was trained on another base"):
            check_generation_request(conn, other, tiny_adapter_dir, "main", "test", ["regimen"])
        with pytest.raises(GenerationRequestError, match="LoRA adapter: .* it is not a LoRA adapter directory"):
            check_generation_request(conn, other, tmp_path, "main", "test", ["regimen"])


@pytest.mark.slow
@pytest.mark.fault
def test_a_killed_generation_process_resumes_with_only_the_missing_outputs(split_db, tiny_model_dir):
    """kill -9 mid-run: what was stored stays as it was, the run is marked failed (not left 'running'),
    and the same command generates only what is missing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, store_intact

    db_path, split_id = split_db
    command = [sys.executable, "-m", "rocore", "generate", "--db", str(db_path), "--model", str(tiny_model_dir),
               "--quantization", "fp32", "--batch-size", "1", "--max-new-tokens", "regimen=48"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    stored = 0
    while stored < 3:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no output stored within 120 s"
        time.sleep(0.05)
        with opened(db_path) as conn:
            stored = conn.execute("SELECT count(*) FROM generations").fetchone()[0]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    counts = store_intact(db_path)
    with opened(db_path) as conn:
        before = {tuple(r) for r in conn.execute("SELECT case_id, task, raw_text, created_at FROM generations")}
        [run] = list_runs(conn)  # as the Generate page lists it
        expected = len(split_case_ids(conn, split_id, "test")) * len(TASKS)
    assert run["status"] == "failed" and "resume" in run["error"], "the dead process's run is not left running"
    assert run["done"] == len(before)
    assert 3 <= counts["generations"] == len(before) < expected

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming generation run {run['run_id']}" in resumed.stdout
    assert f"generated {expected - len(before)} outputs" in resumed.stdout
    after = store_intact(db_path)
    assert after["generations"] == expected and after["generation_runs"] == 1
    with opened(db_path) as conn:
        assert before <= {tuple(r) for r in conn.execute("SELECT case_id, task, raw_text, created_at FROM generations")}
        assert conn.execute("SELECT status FROM generation_runs").fetchone()[0] == "finished"
