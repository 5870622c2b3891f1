"""The demo base's pretraining text: case reports that teach the field but never the product's tasks."""

from rocore.demo.base_model import case_reports, train_tokenizer
from rocore.model.prompts import PLAIN_TEMPLATE
from rocore.data.synthetic import generate_cases


def test_case_reports_pair_each_note_with_its_treatment_and_code_in_prose():
    cases = generate_cases(30, seed=7)
    reports = case_reports(30, seed=7)
    assert len(reports) == 30
    for case, report in zip(cases, reports):
        assert report.startswith(case["diagnosis"]) or report.startswith(f"Diagnosis {case['icd10']}.")
        assert case["diagnosis"] in report and case["regimen"] in report and case["icd10"] in report
    layout_marks = [line.split(":")[0] for line in PLAIN_TEMPLATE.splitlines()]
    assert not any(mark in report for mark in layout_marks for report in reports)


def test_case_reports_are_seeded():
    assert case_reports(20, seed=3) == case_reports(20, seed=3)
    assert case_reports(20, seed=3) != case_reports(20, seed=4)


def test_case_reports_leave_out_the_excluded_notes():
    notes = [case["diagnosis"] for case in generate_cases(40, seed=5)]
    excluded = set(notes[::4])
    reports = case_reports(40, seed=5, exclude=excluded)
    assert len(reports) == 40 - len(excluded)
    assert not any(note in report for note in excluded for report in reports)


def test_tokenizer_is_byte_level_and_round_trips_unseen_text():
    tokenizer = train_tokenizer(case_reports(50, seed=1), vocab_size=400)
    text = "Ünïcode note: 12.5 Gy → C50.412"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
