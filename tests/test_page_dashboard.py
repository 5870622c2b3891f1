"""The Dashboard page through AppTest on a real database: the figures it shows are the evaluation
report's, filters change them, and the review section follows the ratings."""

import json
import re

import pytest
from test_dashboard import add_study, cases_of, make_runs, rate

from rocore.store.db import opened
from rocore.evaluation.dashboard import ScoreCache, compute
from rocore.evaluation.pipeline import evaluate_outputs
from rocore.evaluation.outputs import outputs_from_runs, run_pairs
from rocore.evaluation.pipeline import MODEL_NAMES
from rocore.evaluation.report import TASK_NAMES, html_report


@pytest.fixture
def page_for(open_page):
    return lambda db_path: open_page("app_pages/dashboard.py", db_path)


@pytest.fixture
def runs(split_db):
    """The database path, its base and fine-tuned runs, and the evaluation report of the two."""
    db_path, _ = split_db
    with opened(db_path) as conn:
        base_run, finetuned_run = make_runs(conn)
        report = evaluate_outputs(outputs_from_runs(conn, base_run, finetuned_run))
    return db_path, base_run, finetuned_run, report


def table(at, label: str):
    """The shown dataframes whose index is named `label`, or that have a column or row `label`."""
    for frame in at.dataframe:
        value = frame.value
        if label in (value.index.name, *value.columns, *value.index):
            yield value


def test_without_runs_the_page_says_what_to_do_first(page_for, db_path):
    assert "Generate page first" in page_for(db_path).info[0].value


def test_the_figures_are_the_evaluation_report(page_for, runs):
    db_path, _, _, report = runs
    at = page_for(db_path)
    assert at.metric[0].value == str(report["tasks"]["regimen"]["paired"]["n_pairs"])
    assert [tab.label for tab in at.tabs] == [TASK_NAMES[t] for t in ("regimen", "modality", "icd10")]
    metrics = list(table(at, "metric"))
    tests = list(table(at, "test"))
    for task, shown, test in zip(("regimen", "modality", "icd10"), metrics, tests):
        task_report = report["tasks"][task]
        for model in ("base", "finetuned"):
            assert shown.loc["accuracy", MODEL_NAMES[model]] == task_report[model]["accuracy"]
            low, high = task_report[model]["ci95"]["accuracy"]["wilson"]
            assert shown.loc["accuracy", f"{MODEL_NAMES[model]} 95% CI"] == f"[{low:.3f}, {high:.3f}]"
        low, high = task_report["paired"]["difference"]["accuracy"]["ci95"]["newcombe"]
        assert shown.loc["accuracy", "difference 95% CI"] == f"[{low:.3f}, {high:.3f}]"
        accuracy = test[(test["on"] == "accuracy") & ~test.index.str.startswith("Wilcoxon")]
        exact = task_report["paired"]["exact_tests"]["accuracy"]
        assert accuracy["p"].tolist() == [exact["sign_test_p_one_sided"], exact["mcnemar_exact_p_two_sided"]]
        assert test["p"].iloc[-1] == task_report["paired"]["wilcoxon_p_one_sided"]
    regimen, modality = report["tasks"]["regimen"], report["tasks"]["modality"]
    assert metrics[0].loc["rouge1_f", "difference"] == regimen["paired"]["difference"]["rouge1_f"]["mean"]
    low, high = regimen["base"]["ci95"]["rouge1_f"]["bootstrap"]
    assert metrics[0].loc["rouge1_f", "base 95% CI"] == f"[{low:.3f}, {high:.3f}]"
    assert tests[1].loc["exact McNemar, two-sided", "p"] == modality["paired"]["mcnemar_exact_p"]
    primary = next(table(at, "p (Holm)"))
    assert primary["endpoint"].tolist() == ["rouge1_f", "accuracy", "accuracy"]
    confusion = next(table(at, "gold"))
    assert confusion.to_numpy().tolist() == modality["base"]["confusion_matrix"]["matrix"]
    assert "No ratings yet" in at.info[0].value
    buttons = [button.label for button in at.get("download_button")]
    assert buttons == ["Per-case results (CSV)", "Report (HTML)"]
    assert any("Holm" in m.value for m in at.expander[0].markdown)
    assert "Newcombe" in at.expander[0].code[0].value and "Holm" in at.expander[0].code[0].value


def test_filters_change_the_cases(page_for, runs):
    db_path, *_ = runs
    with opened(db_path) as conn:
        cases = cases_of(conn)
    at = page_for(db_path)
    assert at.metric[0].value == str(len(cases))
    site, modality = cases[0]["site"], cases[0]["modality"]
    at.multiselect[0].set_value([site]).run()
    assert at.metric[0].value == str(sum(c["site"] == site for c in cases)) != str(len(cases))
    at.multiselect[1].set_value([modality]).run()
    assert at.metric[0].value == str(sum(c["site"] == site and c["modality"] == modality for c in cases))


def test_runs_without_a_common_task(page_for, split_db):
    db_path, _ = split_db
    with opened(db_path) as conn:
        make_runs(conn, base_tasks=("modality",), finetuned_tasks=("icd10",))
    at = page_for(db_path)
    assert [radio.options for radio in at.radio] == [["Two runs I choose"]]  # nothing to match
    assert "runs 1 and 2 have no task in common" in at.error[0].value and not at.tabs


def test_runs_generated_apart_are_matched_per_task(page_for, split_db):
    db_path, _ = split_db
    with opened(db_path) as conn:
        base_regimen, tuned_regimen = make_runs(conn, base_tasks=("regimen",), finetuned_tasks=("regimen",))
        base_classes, tuned_classes = make_runs(conn, base_tasks=("modality", "icd10"),
                                                finetuned_tasks=("modality", "icd10"))
    at = page_for(db_path)
    assert at.radio[0].value == "Runs matched per task"
    assert [tab.label for tab in at.tabs] == [TASK_NAMES[t] for t in ("regimen", "modality", "icd10")]
    compared = next(c.value for c in at.caption if c.value.startswith("Compared: "))
    assert f"regimen: run {base_regimen}:" in compared and f"modality, icd10: run {base_classes}:" in compared
    at.radio[0].set_value("Two runs I choose").run()
    assert at.selectbox[0].value == base_regimen and at.selectbox[1].value == tuned_regimen
    assert [tab.label for tab in at.tabs] == [TASK_NAMES["regimen"]]


def test_acceptability_follows_the_ratings(page_for, runs):
    db_path, base_run, finetuned_run, _ = runs
    with opened(db_path) as conn:
        study_id = add_study(conn, base_run, finetuned_run, reviewers=("ana", "ben"))
        cases = [c["case_id"] for c in cases_of(conn)]
    at = page_for(db_path)
    assert "No ratings yet." in at.info[0].value
    with opened(db_path) as conn:
        for i, case_id in enumerate(cases):
            rate(conn, study_id, "ana", case_id, 0, i % 5 != 0)
            rate(conn, study_id, "ben", case_id, 0, i % 5 != 0)
    at.run()
    shares = next(table(at, "Wilson 95% CI"))
    assert shares.loc["fine-tuned", "acceptable cases"] == sum(i % 5 != 0 for i in range(len(cases)))
    assert shares.loc["base", "share"] == 0.0 and shares.loc["fine-tuned", "cases"] == len(cases)
    progress = next(table(at, "reviewer"))
    assert progress["rated"].tolist() == [len(cases), len(cases)]
    agreement = next(table(at, "Fleiss' kappa"))
    assert agreement.loc["Cohen's kappa ana & ben", "fine-tuned"] == 1.0
    assert agreement.loc["items with k ratings", "pooled"] == 2 * len(cases)


def chart(at, rows: str) -> dict:
    """The spec of the shown chart with one bar group per `rows` (its y field)."""
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    return next(spec for spec in specs if spec["encoding"]["y"]["field"] == rows)


def rate_all(db_path, study_id: int, reviewers) -> None:
    with opened(db_path) as conn:
        for i, case_id in enumerate(c["case_id"] for c in cases_of(conn)):
            for reviewer in reviewers:
                rate(conn, study_id, reviewer, case_id, int(i % 3 == 0), int(i % 5 != 0))


def page_with_a_rated_study(page_for, runs):
    """The Dashboard over a study that ana and ben have rated in full."""
    db_path, base_run, finetuned_run, _ = runs
    with opened(db_path) as conn:
        study_id = add_study(conn, base_run, finetuned_run, reviewers=("ana", "ben"))
    rate_all(db_path, study_id, ("ana", "ben"))
    return page_for(db_path)


def test_the_study_box_starts_at_the_newest_study_with_ratings(page_for, runs):
    db_path, base_run, finetuned_run, _ = runs
    with opened(db_path) as conn:
        rated = add_study(conn, base_run, finetuned_run, reviewers=("ana", "ben"))
        add_study(conn, base_run, finetuned_run, reviewers=("cem",), name="second look")  # newer, not rated
    at = page_for(db_path)
    assert at.selectbox[0].value is None  # no study has ratings
    assert "No ratings yet." in at.info[0].value
    rate_all(db_path, rated, ("ana", "ben"))
    at = page_for(db_path)
    assert at.selectbox[0].value == rated
    assert any(c.value.startswith(f"Study {rated} (") for c in at.caption)
    assert next(table(at, "Wilson 95% CI")).loc["fine-tuned", "cases"] > 0


def test_shares_are_drawn_from_0_to_1_and_codes_by_frequency(page_for, runs):
    at, db_path = page_with_a_rated_study(page_for, runs), runs[0]
    for rows in ("model", "class", "gold code"):
        assert chart(at, rows)["encoding"]["x"]["scale"]["domain"] == [0, 1], rows
    with opened(db_path) as conn:
        view = compute(conn, ScoreCache(), run_pairs(conn, None))
    codes = view.icd10_codes.index.tolist()
    assert codes != sorted(codes)  # most frequent first, not alphabetical
    assert chart(at, "gold code")["encoding"]["y"]["sort"] == codes
    shown_in_report = re.findall(r"<th>(C[0-9.]+)</th>", html_report(view))
    assert shown_in_report == codes


def test_missing_figures_show_a_dash_not_none(page_for, runs):
    at = page_with_a_rated_study(page_for, runs)
    assert any(frame.value.isna().any().any() for frame in at.dataframe)
    assert {frame.proto.placeholder for frame in at.dataframe} == {"–"}
