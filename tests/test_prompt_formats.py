"""Prompt formats (plain and chat) from training to stored outputs: defaults and overrides, the masking
boundary, BOS/EOS, stop tokens, finish reasons, the schema migration and the adapter-format refusal."""

import json
import re
import shutil
import sqlite3
from types import SimpleNamespace

import pytest

from conftest import ROOT, save_tiny_llama
from rocore.store import db
from rocore.store.db import opened, transaction
from rocore.store.registry import register_model
from rocore.generation import runs as generation
from rocore.generation.runs import PLAIN_STOP, Stops, decoding_settings, get_or_create_run, run_generation, stops_for
from rocore.model.loading import ADAPTER_INFO, ModelError, attach_adapter, load_model
from rocore.model.prompts import (
    build_example,
    build_prompt,
    chat_template_id,
    default_prompt_format,
    end_of_turn,
    is_instruction_tuned,
    resolve_prompt_format,
    template_id,
)
from rocore.training.trainer import IGNORE_INDEX, TrainingConfig, check_config, sft_examples, train_adapter

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tokenizer(tiny_tokenizer, template=CHATML, markers=("<|im_start|>", "<|im_end|>")):
    """The tiny tokenizer (its own copy) with ChatML's special tokens and a chat template."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    chat = tiny_tokenizer.__class__(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                    pad_token="<pad>", unk_token="<unk>")
    if markers:
        chat.add_special_tokens({"additional_special_tokens": list(markers)})
    chat.chat_template = template
    return chat


@pytest.fixture(scope="module")
def chat_tok(tiny_tokenizer):
    return chat_tokenizer(tiny_tokenizer)


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, chat_tok):
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "Tiny-Chat-Instruct", chat_tok)


def test_chat_by_default_only_for_an_instruction_tuned_model_with_a_chat_template(tmp_path, tiny_tokenizer, chat_tok):
    for name in ("Llama-3.1-8B-Instruct", "Llama-2-7b-chat-hf", "gemma-2-9b-it", "SmolLM2-135M-Instruct",
                 "models--Qwen--Qwen2.5-7B-Instruct/snapshots/0123abc"):
        assert is_instruction_tuned(tmp_path / name), name
        assert default_prompt_format(chat_tok, tmp_path / name) == "chat"
        assert default_prompt_format(tiny_tokenizer, tmp_path / name) == "plain"  # no chat template
    for name in ("Llama-2-7b-hf", "Mistral-7B-v0.3", "Qwen2.5-7B", "gemma-2-9b", "models--meta-llama--Llama-3.1-8B"):
        assert not is_instruction_tuned(tmp_path / name), name
        assert default_prompt_format(chat_tok, tmp_path / name) == "plain"  # a base that ships a template


def test_the_format_can_be_overridden_either_way_but_chat_needs_a_template(tmp_path, tiny_tokenizer, chat_tok):
    instruct, base = tmp_path / "x-Instruct", tmp_path / "x-base"
    assert resolve_prompt_format(chat_tok, instruct) == "chat"
    assert resolve_prompt_format(chat_tok, instruct, "plain") == "plain"
    assert resolve_prompt_format(chat_tok, base, "chat") == "chat"
    with pytest.raises(ModelError, match="needs a chat template"):
        resolve_prompt_format(tiny_tokenizer, instruct, "chat")
    assert check_config(TrainingConfig(prompt_format="chatml")) == [
        "prompt_format: 'chatml' must be auto, plain or chat"]
    assert template_id(chat_tok, "icd10", "chat") == f"icd10-v1-chat-{chat_template_id(chat_tok)}"
    assert template_id(chat_tok, "icd10", "plain") == "icd10-v1-plain"


def test_chat_examples_mask_up_to_the_assistant_content_and_end_with_the_end_of_turn(chat_tok, synthetic_cases):
    case = synthetic_cases[0]
    (example,) = sft_examples(chat_tok, [case], ["icd10"], max_length=512, prompt_format="chat")
    prompt = build_prompt(chat_tok, "icd10", case["diagnosis"], "chat")
    n_prompt = len(chat_tok(prompt, add_special_tokens=False)["input_ids"])
    assert example["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert IGNORE_INDEX not in example["labels"][n_prompt:]
    target = chat_tok.decode(example["labels"][n_prompt:])
    assert target == f"{case['icd10']}<|im_end|>\n"
    assert end_of_turn(chat_tok) == "<|im_end|>"
    assert chat_tok.convert_tokens_to_ids("<|im_end|>") in example["labels"]
    assert chat_tok.eos_token_id not in example["input_ids"]
    # The same tokens as the whole conversation through the template: what generation continues from.
    conversation = chat_tok.apply_chat_template(
        [{"role": "user", "content": prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]},
         {"role": "assistant", "content": case["icd10"]}], tokenize=False)
    assert example["input_ids"] == chat_tok(conversation, add_special_tokens=False)["input_ids"]


def test_plain_examples_start_with_bos_when_the_tokenizer_adds_one_and_end_with_eos(tiny_tokenizer, synthetic_cases):
    from tokenizers import Tokenizer, processors

    case = synthetic_cases[0]
    (example,) = sft_examples(tiny_tokenizer, [case], ["modality"], max_length=512, prompt_format="plain")
    assert example["input_ids"][0] == tiny_tokenizer.bos_token_id
    assert example["input_ids"].count(tiny_tokenizer.bos_token_id) == 1
    assert example["input_ids"][-1] == example["labels"][-1] == tiny_tokenizer.eos_token_id
    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())
    backend.post_processor = processors.ByteLevel(trim_offsets=False)  # like Qwen: no BOS added
    no_bos = tiny_tokenizer.__class__(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    (example,) = sft_examples(no_bos, [case], ["modality"], max_length=512, prompt_format="plain")
    assert example["input_ids"][0] != no_bos.bos_token_id and example["input_ids"][-1] == no_bos.eos_token_id
    assert "".join(build_example(None, "modality", "x", "photon", "plain")).endswith("### Answer: photon")


def test_stop_tokens_merge_the_models_own_list_the_eos_and_the_end_of_turn(tiny_tokenizer, chat_tok):
    def loaded(tokenizer, eos):
        return SimpleNamespace(tokenizer=tokenizer, model=SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos)))

    eos, im_end = chat_tok.eos_token_id, chat_tok.convert_tokens_to_ids("<|im_end|>")
    assert stops_for(loaded(chat_tok, [40, 41]), "chat") == Stops((40, 41, eos, im_end))
    assert stops_for(loaded(chat_tok, im_end), "chat") == Stops((im_end, eos))
    assert stops_for(loaded(chat_tok, None), "plain") == Stops((eos,), (PLAIN_STOP,))
    # An end-of-turn marker that is not one token is a stop string.
    plain_marker = chat_tokenizer(tiny_tokenizer, CHATML.replace("<|im_end|>", "[END]"), markers=())
    assert stops_for(loaded(plain_marker, [eos]), "chat") == Stops((eos,), ("[END]",))


def new_run(db_path, split_id, loaded, adapter_dir=None, prompt_format="plain", limit=4):
    with opened(db_path) as conn:
        base_id = register_model(conn, loaded.path, "base")
        adapter_id = register_model(conn, adapter_dir, "adapter", base_id) if adapter_dir else None
        return get_or_create_run(conn, base_id, adapter_id, split_id, "test", ["modality", "icd10"],
                                 loaded.quantization, decoding_settings({"modality": limit, "icd10": limit}),
                                 prompt_format)[0]


def test_each_output_stores_its_finish_reason_and_prompt_and_the_dashboard_counts_the_cut_ones(
        split_db, tiny_model_dir, tiny_adapter_dir, monkeypatch):
    from rocore.evaluation.dashboard import ScoreCache, compute
    from rocore.evaluation.outputs import run_pairs
    from rocore.evaluation.report import html_report

    db_path, split_id = split_db
    loaded = load_model(tiny_model_dir, "fp32")
    attach_adapter(loaded, tiny_adapter_dir, "finetuned")
    base_run = new_run(db_path, split_id, loaded)
    run_generation(db_path, base_run, loaded, batch_size=16)
    # Every token a stop token: each fine-tuned answer stops after one token.
    monkeypatch.setattr(generation, "stops_for", lambda loaded, prompt_format: Stops(tuple(range(len(loaded.tokenizer)))))
    finetuned_run = new_run(db_path, split_id, loaded, tiny_adapter_dir)
    run_generation(db_path, finetuned_run, loaded, adapter="finetuned", batch_size=16)
    with opened(db_path) as conn:
        rows = conn.execute("SELECT g.*, c.diagnosis FROM generations g JOIN cases c USING (case_id)").fetchall()
        base_rows = [r for r in rows if r["run_id"] == base_run]
        assert all(r["finish_reason"] == "stop" and r["output_tokens"] == 1 for r in rows if r["run_id"] == finetuned_run)
        assert {r["finish_reason"] for r in base_rows} <= {"stop", "length"}
        assert all(r["output_tokens"] == 4 for r in base_rows if r["finish_reason"] == "length")
        assert all(r["finish_reason"] == "stop" for r in base_rows if r["output_tokens"] < 4)
        assert all(PLAIN_STOP not in r["raw_text"] for r in base_rows)  # the stop string ends the text
        assert all(r["prompt"] == build_prompt(loaded.tokenizer, r["task"], r["diagnosis"], "plain") and
                   r["template_id"] == template_id(loaded.tokenizer, r["task"], "plain") for r in rows)
        cut = sum(r["finish_reason"] == "length" for r in base_rows)
        assert cut > 0
        view = compute(conn, ScoreCache(), run_pairs(conn, [(base_run, finetuned_run)]))
        assert view.run_notes == [f"outputs cut at the new-token limit: run {base_run} (base) {cut} of "
                                  f"{len(base_rows)} (modality {sum(r['finish_reason'] == 'length' and r['task'] == 'modality' for r in base_rows)}"
                                  f", icd10 {sum(r['finish_reason'] == 'length' and r['task'] == 'icd10' for r in base_rows)}); "
                                  f"run {finetuned_run} (fine-tuned) 0 of {len(base_rows)}"]
        assert view.run_notes[0] in html_report(view)
        with transaction(conn):
            conn.execute("UPDATE generation_runs SET prompt_format = 'chat' WHERE run_id = ?", (finetuned_run,))
        notes = compute(conn, ScoreCache(), run_pairs(conn, [(base_run, finetuned_run)])).run_notes
        assert notes[-1].startswith(f"the runs use different prompt formats (run {base_run}: plain, run "
                                    f"{finetuned_run}: chat)")


def test_a_run_in_another_format_is_another_run(split_db, tiny_model_dir):
    db_path, split_id = split_db
    loaded = SimpleNamespace(path=tiny_model_dir, quantization="fp32")
    plain = new_run(db_path, split_id, loaded)
    assert new_run(db_path, split_id, loaded) == plain
    chat = new_run(db_path, split_id, loaded, prompt_format="chat")
    assert chat != plain
    with opened(db_path) as conn:
        stored = dict(conn.execute("SELECT run_id, prompt_format FROM generation_runs"))
    assert stored == {plain: "plain", chat: "chat"}


def test_a_database_at_schema_version_1_gets_the_columns_and_keeps_its_rows(split_db):
    db_path, split_id = split_db
    with opened(db_path) as conn:
        model_id = register_model(conn, "/models/base", "base")
        with transaction(conn):
            conn.execute("INSERT INTO generation_runs (base_model_id, split_id, part, tasks, quantization) "
                         "VALUES (?, ?, 'test', '[\"icd10\"]', 'fp32')", (model_id, split_id))
            conn.execute("INSERT INTO generations (run_id, case_id, task, template_id, raw_text, answer, "
                         "prompt_tokens, output_tokens, seconds) SELECT 1, case_id, 'icd10', 'icd10-v1', 'C61', "
                         "'C61', 30, 2, 0.1 FROM split_cases WHERE part = 'test'")
            conn.execute("INSERT INTO training_runs (base_model_id, split_id, config, output_dir) "
                         "VALUES (?, ?, '{}', '/runs/run-1')", (model_id, split_id))
        # Back to version 1: training_runs and studies as version 2 made them (tests/data/reviews-v2.db.schema),
        # ratings too, then what versions 2 to 7 added dropped and the later migration rows removed.
        conn.execute("PRAGMA foreign_keys = OFF")
        with transaction(conn):
            for newer in ("VIEW current_ratings", "TRIGGER ratings_closed_study", "TRIGGER assignments_rated_fixed",
                          "VIEW current_adjudications", "TABLE adjudications", "TABLE practice_ratings",
                          "TABLE practice_assignments", "TABLE sessions"):
                conn.execute(f"DROP {newer}")
            for table in ("training_runs", "studies", "ratings"):
                version_2 = re.search(rf"CREATE TABLE IF NOT EXISTS {table} \(.*?\n\);",
                                      (ROOT / "tests" / "data" / "reviews-v2.db.schema").read_text(), re.S).group(0)
                conn.execute(version_2.replace(table, f"{table}_v2", 1))
                kept = [r[1] for r in conn.execute(f"PRAGMA table_info({table}_v2)")]
                conn.execute(f"INSERT INTO {table}_v2 SELECT {', '.join(kept)} FROM {table}")
                conn.execute(f"DROP TABLE {table}")
                conn.execute(f"ALTER TABLE {table}_v2 RENAME TO {table}")
            for table, column in (("training_runs", "prompt_format"), ("generation_runs", "prompt_format"),
                                  ("generations", "finish_reason"), ("generations", "prompt"),
                                  ("generation_runs", "backend"), ("generation_runs", "server_url"),
                                  ("generation_runs", "served_model")):
                conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
            conn.execute("DELETE FROM schema_migrations WHERE version > 1")
        before = {t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t}")]
                  for t in ("generation_runs", "generations", "training_runs")}
    assert before["generations"]
    with pytest.raises(sqlite3.OperationalError):  # it really is the old layout
        sqlite3.connect(db_path).execute("SELECT finish_reason FROM generations")
    with opened(db_path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == db.SCHEMA_VERSION >= 2
        for table, columns in before.items():
            rows = conn.execute(f"SELECT * FROM {table}").fetchall()
            assert [tuple(r)[:len(columns[0])] for r in rows] == columns
        assert {r[0] for r in conn.execute("SELECT DISTINCT finish_reason FROM generations")} == {None}
        assert conn.execute("SELECT prompt_format FROM generation_runs").fetchone()[0] is None
        assert conn.execute("SELECT prompt_format FROM training_runs").fetchone()[0] is None
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE generations SET finish_reason = 'eos'")


def write_format(adapter_dir, prompt_format, chat_template):
    info_file = adapter_dir / ADAPTER_INFO
    info = json.loads(info_file.read_text())
    info_file.write_text(json.dumps({**info, "prompt_format": prompt_format, "chat_template": chat_template}))


def test_an_adapter_is_refused_in_another_format_or_without_its_chat_template(tmp_path, tiny_tokenizer, chat_tok,
                                                                              tiny_model_dir, tiny_adapter_dir, split_db):
    from rocore.cli import main

    adapter = shutil.copytree(tiny_adapter_dir, tmp_path / "adapter")
    write_format(adapter, "chat", chat_template_id(chat_tok))
    assert resolve_prompt_format(chat_tok, tmp_path / "base", "auto", adapter) == "chat"  # the adapter's own
    with pytest.raises(ModelError, match="was trained with the chat prompt format, not plain"):
        resolve_prompt_format(chat_tok, tmp_path / "base", "plain", adapter)
    with pytest.raises(ModelError, match=r"trained with chat template \w+, but the tokenizer of .* has no chat template"):
        resolve_prompt_format(tiny_tokenizer, tmp_path / "base", "auto", adapter)
    other = chat_tokenizer(tiny_tokenizer, CHATML.replace("\n{{ m.content }}", ": {{ m.content }}"))
    with pytest.raises(ModelError, match="has a different chat template"):
        resolve_prompt_format(other, tmp_path / "base", "chat", adapter)
    write_format(adapter, "plain", None)
    assert resolve_prompt_format(chat_tok, tmp_path / "x-Instruct", "auto", adapter) == "plain"
    # The command line refuses it before any run is recorded.
    db_path, _ = split_db
    write_format(adapter, "chat", chat_template_id(chat_tok))
    args = ["generate", "--db", str(db_path), "--model", str(tiny_model_dir), "--adapter", str(adapter),
            "--quantization", "fp32", "--device", "cpu", "--tasks", "icd10"]
    assert main(args) == 1
    with opened(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM generation_runs").fetchone()[0] == 0


def test_training_records_the_format_and_chat_template_with_the_adapter_and_the_run(
        tmp_path, chat_model_dir, chat_tok, synthetic_cases, split_db):
    from rocore.training.runs import config_from_dict, create_run

    config = TrainingConfig(quantization="fp32", max_steps=1, batch_size=2, tasks=["icd10"],
                            early_stopping_patience=None)
    adapter_dir = train_adapter(chat_model_dir, synthetic_cases[:2], [], tmp_path / "run", config, device="cpu")
    info = json.loads((adapter_dir / ADAPTER_INFO).read_text())
    assert info["prompt_format"] == "chat" and info["chat_template"] == chat_template_id(chat_tok)
    assert info["templates"] == {"icd10": template_id(chat_tok, "icd10", "chat")}
    db_path, _ = split_db
    with opened(db_path) as conn:
        chat_run = create_run(conn, chat_model_dir, "main", config_from_dict({}), tmp_path / "runs")
        plain_run = create_run(conn, chat_model_dir, "main", config_from_dict({"prompt_format": "plain"}),
                               tmp_path / "runs")
        stored = {r["run_id"]: (r["prompt_format"], json.loads(r["config"])["prompt_format"])
                  for r in conn.execute("SELECT * FROM training_runs")}
    assert stored == {chat_run: ("chat", "chat"), plain_run: ("plain", "plain")}


@pytest.mark.parametrize("page, program", [("app_pages/generate.py", "rocore generate"), ("app_pages/train.py", "train")])
def test_the_pages_pass_the_chosen_prompt_format_on(page, program, split_db, tiny_model_dir, open_page):
    db_path, _ = split_db
    with opened(db_path) as conn:
        register_model(conn, tiny_model_dir, "base")
    at = open_page(page, db_path)
    choice = next(box for box in at.selectbox if box.label == "Prompt format")
    assert choice.value == "auto" and choice.options == ["auto", "plain", "chat"]
    choice.set_value("plain")
    at.run()
    command = at.code[0].value
    assert command.startswith(f"python -m {program} ")
    assert ("--prompt-format plain" if program != "train" else "--set 'prompt_format=\"plain\"'") in command
