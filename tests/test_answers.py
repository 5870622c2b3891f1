"""Answer extraction against what chat models really write.

tests/data/answer_corpus.jsonl holds answers written by hand in the styles of Llama-2-chat,
Mistral-Instruct, Llama-3-Instruct, Qwen2.5-Instruct, Gemma-it, SmolLM2 and the plain-layout demo
model, each with the reading a person would make and the flags that qualify it. Rows whose
source_style is "smollm2-real" are real greedy outputs of SmolLM2-135M-Instruct in the chat format
on synthetic cases, cut at the token limit, with the reading checked by hand.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rocore.model.answers import AMBIGUOUS, FLAGS, SEVERAL_CODES, Answer, extract_answer, read_answer
from rocore.model.prompts import TASKS

CORPUS = [json.loads(line) for line in
          (Path(__file__).parent / "data" / "answer_corpus.jsonl").read_text(encoding="utf-8").splitlines()
          if line.strip()]


def test_the_corpus_is_large_and_varied_enough():
    per_task = Counter(item["task"] for item in CORPUS)
    assert set(per_task) == set(TASKS) and min(per_task.values()) >= 60
    for task in TASKS:
        styles = {item["source_style"] for item in CORPUS if item["task"] == task}
        assert {"llama2-chat", "mistral-instruct", "llama3-instruct", "qwen2.5-instruct", "gemma-it",
                "smollm2"} <= styles
        assert any(item["expected"] is None for item in CORPUS if item["task"] == task)
    assert all(set(item["flags"]) <= set(FLAGS) for item in CORPUS)


@pytest.mark.parametrize("item", CORPUS, ids=[f"{i}-{item['task']}-{item['source_style']}"
                                              for i, item in enumerate(CORPUS)])
def test_corpus(item):
    answer = read_answer(item["task"], item["text"])
    assert answer == Answer(item["expected"], tuple(item["flags"])), item["text"]
    assert extract_answer(item["task"], item["text"]) == item["expected"]


def test_several_modalities_are_no_answer_but_flagged():
    assert read_answer("modality", "Photon or proton therapy") == Answer(None, (AMBIGUOUS,))
    assert read_answer("modality", "Photon (IMRT or VMAT)") == Answer("photon")


def test_negated_modalities_are_ruled_out():
    assert extract_answer("modality", "Protons are not indicated; photon IMRT is standard.") == "photon"
    assert extract_answer("modality", "Not a candidate for protons.") is None


def test_the_echoed_option_list_is_no_answer():
    assert read_answer("modality", "photon, proton, electron or brachytherapy") == Answer(None)
    assert read_answer("modality", "PET, proton, electron or brachy") == Answer(None)


def test_codes_are_normalised_and_the_first_billable_one_is_read():
    assert extract_answer("icd10", "c50412") == "C50.412"
    assert read_answer("icd10", "C50.9 (left: C50.912)") == Answer("C50.912", (SEVERAL_CODES,))
    assert read_answer("icd10", "C34.1") == Answer("C34.1")
    assert read_answer("icd10", "pT2N0M0, p16 positive") == Answer(None)


def test_a_regimen_is_read_past_its_preamble_and_without_run_on_tasks():
    raw = ("To determine the appropriate treatment plan, we need to consider the stage.\n\n"
           "70 Gy in 35 fractions with IMRT and concurrent cisplatin.\n\nModality: photon. ICD-10-CM: C09.9")
    assert extract_answer("regimen", raw) == "70 Gy in 35 fractions with IMRT and concurrent cisplatin"


def test_plain_answers_read_back_unchanged(synthetic_cases):
    """The demo model answers in the gold layout; its answers must read back exactly."""
    for case in synthetic_cases:
        for task in TASKS:
            assert extract_answer(task, f" {case[task]}</s>\n### Patient: next") == case[task]


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task 'dose'"):
        read_answer("dose", "60 Gy")


# --------------------------------------------------------------------------- evaluate FILE and --db

def chat_output(task: str, gold: str, i: int) -> str:
    """Raw chat-model text around a gold answer: right, wrong, unreadable or ambiguous by turn."""
    wrong = {"regimen": "8 Gy in 1 fraction", "modality": "electron", "icd10": "C80.1"}[task]
    shapes = [
        f"Sure! Here is the answer:\n\n**{gold}**",
        f"  The answer is {wrong}.",
        "I'm sorry, but I cannot answer that." if task != "modality" else "Photon or proton therapy.",
        f"{gold}\n\nModality: photon. ICD-10-CM: C61." if task == "regimen" else f"`{gold}`\n\nNote: {wrong} is wrong.",
    ]
    return shapes[i % len(shapes)]


def test_evaluate_file_and_db_give_the_same_figures_for_the_same_raw_outputs(split_db, tmp_path):
    import pandas as pd
    from test_cli import rocore
    from test_dashboard import add_run, cases_of

    from rocore.store.db import opened, transaction

    db_path, _ = split_db
    rows = []
    with opened(db_path) as conn:
        runs = {model: add_run(conn, model) for model in ("base", "finetuned")}
        for i, case in enumerate(cases_of(conn)):
            for task in TASKS:
                gold = case[task].strip()
                outputs = {"base": chat_output(task, gold, i), "finetuned": chat_output(task, gold, i + 3 * (i % 2))}
                rows.append({"case_id": case["case_id"], "task": task, "gold": gold, **outputs})
                with transaction(conn):
                    for model, text in outputs.items():
                        conn.execute(
                            "INSERT INTO generations (run_id, case_id, task, template_id, raw_text, answer, "
                            "prompt_tokens, output_tokens, seconds) VALUES (?, ?, ?, 't', ?, ?, 10, 3, 0.1)",
                            (runs[model], case["case_id"], task, text, extract_answer(task, text)))
    source = tmp_path / "outputs.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    with opened(db_path) as conn:  # the flags of a stored run are derived from its raw text
        stored = conn.execute("SELECT task, raw_text FROM generations WHERE run_id = ?", (runs["base"],)).fetchall()
    ambiguous = sum(AMBIGUOUS in read_answer(task, text).flags for task, text in stored)
    assert ambiguous == sum(row["task"] == "modality" and row["base"].startswith("Photon or proton") for row in rows) > 0

    figures = {}
    for name, args in (("db", ("--db", db_path, "--runs", runs["base"], runs["finetuned"])),
                       ("raw", (source,)), ("raw_flag", (source, "--raw")), ("extracted", (source, "--extracted"))):
        result = rocore("evaluate", *args, "--json")
        assert result.returncode == 0, result.stderr
        figures[name] = json.loads(result.stdout)["tasks"]
    assert figures["raw"] == figures["db"] == figures["raw_flag"]
    # Scored as written, the markdown and preambles of the same text are wrong answers.
    assert figures["extracted"] != figures["raw"]
    assert figures["extracted"]["icd10"]["base"]["accuracy"] < figures["raw"]["icd10"]["base"]["accuracy"]
    assert figures["raw"]["modality"]["finetuned"]["accuracy"] == 0.5


def test_a_file_of_raw_outputs_is_read_as_stored_runs_are(tmp_path):
    from rocore.evaluation.outputs import read_outputs_file

    path = tmp_path / "outputs.csv"
    path.write_text('case_id,task,gold,base,finetuned\n'
                    'P1,modality,photon,"Sure! **Photons**, not protons.",photon\n'
                    'P1,icd10,C61,"The ICD-10-CM code for this diagnosis is c61.",I cannot say\n'
                    'P1,regimen,60 Gy in 20 fractions,"Here it is:\n\n60 Gy in 20 fractions.\n\nModality: photon",\n',
                    encoding="utf-8")
    raw = read_outputs_file(path)
    assert raw["base"].tolist() == ["photon", "C61", "60 Gy in 20 fractions"]
    assert raw["finetuned"].tolist()[:2] == ["photon", "I cannot say"]
    as_written = read_outputs_file(path, extracted=True)
    assert as_written["base"].tolist()[0] == "Sure! **Photons**, not protons."
