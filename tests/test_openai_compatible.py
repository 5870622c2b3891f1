"""Generation through an OpenAI-compatible server: a real `transformers serve` process on 127.0.0.1 with
the tiny model, against the local backend's outputs; and a scripted HTTP server for the answers a real
server gives only when it breaks (5xx, missing choices, no usage)."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ServeProcess, free_port, store_intact
from rocore.cli import main as rocore_main
from rocore.generation.openai_compatible import (Server, ServerError, check_server, clean_server_url, complete_all,
                                                 load_served, wire_prompt)
from rocore.generation.runs import (SERVED_QUANTIZATION, GenerationRequestError, check_generation_request,
                                    decoding_settings, get_or_create_run, list_runs, run_generation)
from rocore.model.loading import load_model
from rocore.model.prompts import TASKS, build_prompt
from rocore.store.db import opened
from rocore.store.registry import register_model

DECODING = decoding_settings({"regimen": 10, "modality": 4, "icd10": 4})


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    return load_model(tiny_model_dir, "fp32")


def new_run(db_path, split_id, model_dir, server=None, quantization=None, tasks=TASKS):
    with opened(db_path) as conn:
        base_id = register_model(conn, model_dir, "base")
        return get_or_create_run(conn, base_id, None, split_id, "test", list(tasks),
                                 quantization or (SERVED_QUANTIZATION if server else "fp32"), DECODING, "plain",
                                 server=server)[0]


def outputs(db_path, run_id) -> dict:
    with opened(db_path) as conn:
        return {(r["case_id"], r["task"]): (r["prompt"], r["raw_text"], r["answer"], r["prompt_tokens"],
                                           r["output_tokens"], r["finish_reason"])
                for r in conn.execute("SELECT * FROM generations WHERE run_id = ?", (run_id,))}


def test_a_served_run_stores_what_the_local_backend_generates_for_the_same_prompts(split_db, served, local,
                                                                                  tiny_model_dir):
    db_path, split_id = split_db
    server = Server(served.url, str(tiny_model_dir), concurrency=4)
    local_run = new_run(db_path, split_id, tiny_model_dir)
    served_run = new_run(db_path, split_id, tiny_model_dir, server)
    assert served_run != local_run
    run_generation(db_path, local_run, local, batch_size=8)
    final = run_generation(db_path, served_run, load_served(server, tiny_model_dir), batch_size=8)
    ours, theirs = outputs(db_path, local_run), outputs(db_path, served_run)
    assert final.done == len(theirs) == len(ours) > 0
    assert theirs == ours, "same prompts, greedy: same text, answer, token counts and finish reasons"
    with opened(db_path) as conn:
        run = conn.execute("SELECT * FROM generation_runs WHERE run_id = ?", (served_run,)).fetchone()
        started = conn.execute("SELECT detail FROM audit_log WHERE entity_id = ? AND action = 'start-generation-run'",
                               (served_run,)).fetchone()
        label = next(r["label"] for r in list_runs(conn) if r["run_id"] == served_run)
    assert (run["backend"], run["server_url"], run["served_model"], run["quantization"], run["status"]) == \
        ("openai", served.url, str(tiny_model_dir), "served", "finished")
    assert json.loads(started["detail"])["server"] == served.url
    assert f"served as {tiny_model_dir} by {served.url}" in label


def test_the_bos_the_product_writes_is_left_for_the_server_to_add(local):
    prompt = build_prompt(local.tokenizer, "icd10", "prostate adenocarcinoma", "plain")
    assert prompt.startswith(local.tokenizer.bos_token), "the tiny tokenizer adds BOS, as Llama-2's does"
    sent = wire_prompt(local.tokenizer, prompt)
    assert local.tokenizer(sent)["input_ids"] == local.tokenizer(prompt, add_special_tokens=False)["input_ids"]


@pytest.mark.fault
def test_a_served_run_stopped_by_its_server_keeps_its_outputs_and_resumes_from_another_port(
        split_db, tiny_model_dir, tmp_path, local):
    db_path, split_id = split_db
    first = ServeProcess(tiny_model_dir, tmp_path).start()
    server = Server(first.url, str(tiny_model_dir), concurrency=2, retries=1)
    run_id = new_run(db_path, split_id, tiny_model_dir, server)

    def stop_the_server(progress):
        if progress.done >= 8:
            first.stop()

    try:
        with pytest.raises(ServerError) as failure:
            run_generation(db_path, run_id, load_served(server, tiny_model_dir), batch_size=8,
                           progress=stop_the_server)
    finally:
        first.stop()
    assert f"server {first.url} (model {tiny_model_dir}): cannot connect" in str(failure.value)
    assert "rerun to resume" in str(failure.value)
    with opened(db_path) as conn:
        run = conn.execute("SELECT status, error FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
    kept = outputs(db_path, run_id)
    assert run["status"] == "failed" and first.url in run["error"] and len(kept) == 8
    assert store_intact(db_path)["generations"] == 8

    second = ServeProcess(tiny_model_dir, tmp_path).start()
    try:
        moved = Server(second.url, str(tiny_model_dir), concurrency=2)
        with opened(db_path) as conn:
            base_id = register_model(conn, tiny_model_dir, "base")
            again, resumed = get_or_create_run(conn, base_id, None, split_id, "test", list(TASKS), SERVED_QUANTIZATION,
                                               DECODING, "plain", server=moved)
        assert (again, resumed) == (run_id, True)
        final = run_generation(db_path, run_id, load_served(moved, tiny_model_dir), batch_size=8)
    finally:
        second.stop()
    resumed_outputs = outputs(db_path, run_id)
    assert final.total == len(resumed_outputs) - 8, "only the missing outputs were asked for"
    assert {k: resumed_outputs[k] for k in kept} == kept
    local_run = new_run(db_path, split_id, tiny_model_dir)
    run_generation(db_path, local_run, local, batch_size=8)
    assert resumed_outputs == outputs(db_path, local_run)
    with opened(db_path) as conn:
        run = conn.execute("SELECT status, server_url FROM generation_runs WHERE run_id = ?", (run_id,)).fetchone()
        moves = conn.execute("SELECT detail FROM audit_log WHERE action = 'move-generation-run'").fetchall()
    assert tuple(run) == ("finished", second.url)
    assert [json.loads(m["detail"]) for m in moves] == [{"from": first.url, "to": second.url}]


def test_a_server_that_is_down_is_refused_before_the_run_starts(split_db, tiny_model_dir, capsys):
    db_path, _ = split_db
    url = f"http://127.0.0.1:{free_port()}/v1"
    with opened(db_path) as conn, pytest.raises(GenerationRequestError) as refused:
        check_generation_request(conn, tiny_model_dir, None, None, "test", "icd10",
                                 server=Server(url, "base", retries=0))
    assert refused.value.problems == [
        f"Server: server {url} (model base): cannot connect (" + refused.value.problems[0].split("cannot connect (")[1]]
    assert "is it running? start it, or correct --base-url" in refused.value.problems[0]
    code = rocore_main(["generate", "--db", str(db_path), "--model", str(tiny_model_dir), "--tasks", "icd10",
                        "--backend", "openai", "--base-url", url, "--served-model", "base"])
    assert code == 1 and f"Server: server {url} (model base): cannot connect" in capsys.readouterr().err
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM generation_runs").fetchone()[0] == 0


def test_a_model_name_the_server_does_not_serve_stops_the_run_with_what_it_said(split_db, served, tiny_model_dir,
                                                                                capsys):
    db_path, _ = split_db
    code = rocore_main(["generate", "--db", str(db_path), "--model", str(tiny_model_dir), "--tasks", "icd10",
                        "--backend", "openai", "--base-url", served.url, "--served-model", "finetuned"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"server {served.url} (model finetuned): HTTP 400: Server is pinned to '{tiny_model_dir}'; requested 'finetuned'; check" in err
    assert "check that it serves a model named 'finetuned' (--served-model)" in err
    with opened(db_path) as conn:
        run = conn.execute("SELECT status, error FROM generation_runs").fetchone()
        assert conn.execute("SELECT count(*) FROM generations").fetchone()[0] == 0
    assert run["status"] == "failed" and "Server is pinned" in run["error"]


def test_the_command_line_runs_and_resumes_a_served_run(split_db, served, tiny_model_dir, capsys):
    db_path, _ = split_db
    args = ["generate", "--db", str(db_path), "--model", str(tiny_model_dir), "--tasks", "icd10", "--backend",
            "openai", "--base-url", served.url + "/", "--served-model", str(tiny_model_dir), "--concurrency", "3",
            "--max-new-tokens", "icd10=4"]
    assert rocore_main([*args, "--limit", "5"]) == 0
    assert f"served as {tiny_model_dir} by {served.url}, 3 requests at a time" in capsys.readouterr().out
    assert rocore_main(args) == 0
    assert "resuming generation run 1" in capsys.readouterr().out
    with opened(db_path) as conn:
        run = conn.execute("SELECT * FROM generation_runs").fetchone()
        n = conn.execute("SELECT count(*) FROM generations").fetchone()[0]
        test_cases = conn.execute("SELECT count(*) FROM split_cases WHERE part = 'test'").fetchone()[0]
    assert (run["status"], run["backend"], run["server_url"], n) == ("finished", "openai", served.url, test_cases)


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("http://gpu-server:8000/v1/", "http://gpu-server:8000/v1"),
    ("https://llm.hospital.example/openai/v1", "https://llm.hospital.example/openai/v1"),
])
def test_server_urls_are_stored_in_one_form(url, expected):
    assert clean_server_url(url) == expected


@pytest.mark.parametrize("url, message", [
    ("http://user:secret@gpu:8000/v1", "must not carry credentials"),
    ("http://gpu:8000/v1?api_key=secret", "must not carry credentials"),
    ("gpu:8000", "is not an http(s) URL"),
    ("ftp://gpu/v1", "is not an http(s) URL"),
])
def test_a_server_url_with_credentials_or_without_a_scheme_is_refused(url, message):
    with pytest.raises(ServerError, match=re.escape(message)) as refused:
        Server(url, "base")
    assert "secret" not in str(refused.value)


class ScriptedServer:
    """An HTTP server answering /v1/completions from a script of (status, body) pairs, the last one
    repeated, and /v1/models with `models`: the failures a real server shows only when it breaks."""

    def __init__(self, script, models=None):
        self.script, self.models, self.requests = list(script), models, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if owner.models is None:
                    self._send(404, {"detail": "Not Found"})
                else:
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in owner.models]})

            def do_POST(self):
                owner.requests.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                status, body = owner.script.pop(0) if len(owner.script) > 1 else owner.script[0]
                self._send(status, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(text="C61", finish_reason="stop", usage=True):
    body = {"id": "x", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}]}
    return {**body, "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}} if usage else body


@pytest.fixture
def scripted():
    servers = []

    def make(script, models=None):
        servers.append(ScriptedServer(script, models))
        return servers[-1]
    yield make
    for server in servers:
        server.close()


def test_a_server_error_is_retried_and_a_lasting_one_names_the_server_and_what_it_said(scripted, local):
    flaky = scripted([(503, {"detail": "warming up"}), (500, {"message": "busy"}), (200, answer())])
    done = complete_all(Server(flaky.url, "m", retries=3), local.tokenizer, ["prompt"], 4, ["\n###"])
    assert [(c.text, c.prompt_tokens, c.output_tokens, c.finish_reason) for c in done] == [("C61", 7, 2, "stop")]
    assert len(flaky.requests) == 3
    assert flaky.requests[-1] == {"model": "m", "prompt": "prompt", "max_tokens": 4, "temperature": 0, "top_p": 1,
                                  "n": 1, "stop": ["\n###"]}, "greedy, the run's limit and stop strings"

    broken = scripted([(500, {"detail": "CUDA error: an illegal memory access"})])
    with pytest.raises(ServerError) as failure:
        complete_all(Server(broken.url, "m", retries=2), local.tokenizer, ["prompt"], 4, [])
    assert str(failure.value) == (f"server {broken.url} (model m): HTTP 500: CUDA error: an illegal memory access; "
                                  "it kept failing after 2 retries; see the server's log, then rerun to resume")
    assert len(broken.requests) == 3


def test_an_answer_without_one_choice_or_token_counts_is_refused(scripted, local):
    for body, said in ((dict(answer(), choices=[]), "returned 0 choices where one answer was asked for"),
                       (answer(usage=False), "returned no token counts (usage)")):
        server = scripted([(200, body)])
        with pytest.raises(ServerError, match=re.escape(said)):
            complete_all(Server(server.url, "m"), local.tokenizer, ["a", "b"], 4, [])


def test_a_failure_mid_batch_stores_the_answers_already_given(scripted, local):
    server = scripted([(200, answer("one")), (200, answer("two")), (400, {"detail": "prompt too long"})])
    kept = []
    with pytest.raises(ServerError, match="HTTP 400: prompt too long"):
        complete_all(Server(server.url, "m", concurrency=1), local.tokenizer, ["a", "b", "c", "d"], 4, [],
                     stored=kept.extend)
    assert [(i, c.text) for i, c in kept] == [(0, "one"), (1, "two")]


def test_validation_errors_are_reported_without_the_values_they_quote(scripted, local):
    server = scripted([(422, {"detail": [{"type": "extra_forbidden", "loc": ["body", "stop_token_ids"],
                                          "msg": "Extra inputs are not permitted", "input": [7, 9]}]})])
    with pytest.raises(ServerError) as failure:
        complete_all(Server(server.url, "m"), local.tokenizer, ["secret case text"], 4, [], [7])
    assert "HTTP 422: body.stop_token_ids: Extra inputs are not permitted" in str(failure.value)
    assert "[7, 9]" not in str(failure.value) and "secret" not in str(failure.value)


def test_a_stop_string_the_server_kept_is_cut_and_the_answer_counts_as_stopped(scripted, local):
    server = scripted([(200, answer("60 Gy in 20 fractions\n### Patient: next", "length"))])
    done = complete_all(Server(server.url, "m"), local.tokenizer, ["p"], 10, ["\n###"])
    assert (done[0].text, done[0].finish_reason) == ("60 Gy in 20 fractions", "stop")


def test_a_server_listing_other_models_is_refused_and_one_without_a_list_is_let_through(scripted):
    listing = scripted([(200, answer())], models=["meta-llama/Llama-2-7b-hf", "finetuned"])
    check_server(Server(listing.url, "finetuned"))
    with pytest.raises(ServerError, match="serves meta-llama/Llama-2-7b-hf, finetuned, not 'base'"):
        check_server(Server(listing.url, "base"))
    check_server(Server(scripted([(200, answer())]).url, "anything"))


def test_a_served_run_feeds_a_blinded_study_and_the_dashboard_like_any_other(split_db, served, tiny_model_dir,
                                                                              tiny_adapter_dir):
    from rocore.evaluation.dashboard import ScoreCache, compute
    from rocore.evaluation.outputs import run_pairs
    from rocore.model.loading import attach_adapter
    from rocore.review import auth, studies

    db_path, split_id = split_db
    server = Server(served.url, str(tiny_model_dir))
    base_run = new_run(db_path, split_id, tiny_model_dir, server, tasks=["regimen"])
    run_generation(db_path, base_run, load_served(server, tiny_model_dir), batch_size=16)
    tuned = load_model(tiny_model_dir, "fp32")
    attach_adapter(tuned, tiny_adapter_dir, "finetuned")
    with opened(db_path) as conn:
        base_id = register_model(conn, tiny_model_dir, "base")
        adapter_id = register_model(conn, tiny_adapter_dir, "adapter", base_id)
        tuned_run = get_or_create_run(conn, base_id, adapter_id, split_id, "test", ["regimen"], "fp32", DECODING,
                                      "plain")[0]
    run_generation(db_path, tuned_run, tuned, adapter="finetuned", batch_size=16)
    with opened(db_path) as conn:
        admin = auth.create_first_admin(conn, "boss", "correct horse battery")
        reviewer, _ = auth.add_user(conn, "oncologist", actor_id=admin.id)
        with pytest.raises(studies.ReviewError):
            studies.create_study(conn, actor_id=admin.id, name=f"{tiny_model_dir.name} check", run_1_id=base_run,
                                 run_2_id=tuned_run, reviewer_ids=[reviewer.id], sample_n=4, seed=1)
        study_id = studies.create_study(conn, actor_id=admin.id, name="Prostate regimens", run_1_id=base_run,
                                        run_2_id=tuned_run, reviewer_ids=[reviewer.id], sample_n=4, seed=1)
        item = studies.open_item(conn, reviewer.id, study_id)
        view = compute(conn, ScoreCache(), run_pairs(conn, [(base_run, tuned_run)]))
        stored = {r[0] for r in conn.execute("SELECT raw_text FROM generations WHERE case_id = ? AND task = 'regimen'",
                                             (conn.execute("SELECT case_id FROM assignments").fetchone()[0],))}
    shown = repr(item)
    assert {item.text_a, item.text_b} <= {studies.reviewer_text(None, t) for t in stored}
    assert served.url not in shown and "127.0.0.1" not in shown and "served" not in shown
    assert view.n_cases > 0 and set(view.scores["model"]) == {"base", "finetuned"}
    assert (f"generated run {base_run} (base) by the OpenAI-compatible server {served.url} as {tiny_model_dir}; "
            f"run {tuned_run} (fine-tuned) locally in fp32") in view.run_notes


@pytest.mark.slow
def test_a_real_chat_model_served_answers_as_it_does_locally(split_db, smollm2_dir, tmp_path):
    """SmolLM2-135M-Instruct in the chat format: the server stops on <|im_end|> from the model's own
    generation config, and counts the same tokens."""
    db_path, split_id = split_db
    process = ServeProcess(smollm2_dir, tmp_path).start()
    try:
        server = Server(process.url, str(smollm2_dir), concurrency=2)
        with opened(db_path) as conn:
            base_id = register_model(conn, smollm2_dir, "base")
            runs = [get_or_create_run(conn, base_id, None, split_id, "test", ["modality", "icd10"], quantization,
                                      decoding_settings({"modality": 24, "icd10": 24}), "chat", server=s)[0]
                    for quantization, s in (("fp32", None), (SERVED_QUANTIZATION, server))]
        run_generation(db_path, runs[1], load_served(server, smollm2_dir), batch_size=4, limit=4)
    finally:
        process.stop()
    run_generation(db_path, runs[0], load_model(smollm2_dir, "fp32", "cpu"), batch_size=4, limit=4)
    local_outputs, served_outputs = outputs(db_path, runs[0]), outputs(db_path, runs[1])
    assert len(served_outputs) == 4 and served_outputs == local_outputs
    assert "stop" in {v[5] for v in served_outputs.values()}, "an answer ended on <|im_end|>, not at the limit"
