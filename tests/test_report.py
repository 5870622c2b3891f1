"""The exports: per-case CSV safe to open in a spreadsheet, and a self-contained HTML report; from the
library and through `python -m rocore evaluate --csv --html`."""

from __future__ import annotations

import csv
import html
import importlib.metadata
import io
import json
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT
from test_dashboard import add_study, cases_of, make_runs, rate

from rocore.evaluation.outputs import run_pairs
from rocore.evaluation.dashboard import ScoreCache, compute, from_outputs
from rocore.evaluation.pipeline import MODEL_NAMES
from rocore.evaluation.report import (
    TASK_NAMES,
    acceptability_table,
    acceptability_tests_table,
    agreement_table,
    bar_chart_svg,
    html_report,
    json_figures,
    metric_table,
    order_checks_table,
    per_case_csv,
    primary_table,
)
from rocore.store.db import opened

OUTPUTS = pd.DataFrame(
    [("c1", "regimen", "60 Gy in 20 fractions", "=HYPERLINK(\"x\")", "60 Gy in 20 fractions"),
     ("c2", "regimen", "-", "+40 Gy", "-"),
     ("c3", "regimen", "30 Gy in 10 fractions", "@SUM(A1)", "30 Gy in 10 fractions"),
     ("c4", "regimen", "8 Gy in 1 fraction", "-5", "\tcmd"),
     ("c1", "modality", "photon", "proton", "photon"),
     ("c2", "modality", "electron", "photon", "electron"),
     ("c1", "icd10", "C61", "C61", "C61"),
     ("c2", "icd10", "C50.412", "C50.411", "C50.412")],
    columns=["case_id", "task", "gold", "base", "finetuned"])


def rocore(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rocore", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)


def test_per_case_csv_has_one_row_per_case_task_and_model_with_formulas_neutralised():
    view = from_outputs(OUTPUTS, {"file": "outputs.csv"})
    data = per_case_csv(view.scores)
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert len(rows) == 2 * len(OUTPUTS)
    assert [(r["case_id"], r["task"], r["model"]) for r in rows[:4]] == [
        ("c1", "regimen", "base"), ("c1", "regimen", "finetuned"), ("c2", "regimen", "base"),
        ("c2", "regimen", "finetuned")]
    by_key = {(r["case_id"], r["task"], r["model"]): r for r in rows}
    assert by_key["c1", "regimen", "base"]["output"] == "'=HYPERLINK(\"x\")"
    assert by_key["c2", "regimen", "base"]["output"] == "'+40 Gy"
    assert by_key["c2", "regimen", "finetuned"]["gold"] == "'-"
    assert by_key["c2", "regimen", "finetuned"]["output"] == "'-"
    assert by_key["c3", "regimen", "base"]["output"] == "'@SUM(A1)"
    assert by_key["c4", "regimen", "base"]["output"] == "'-5"
    assert by_key["c4", "regimen", "finetuned"]["output"] == "'\tcmd"
    assert by_key["c1", "regimen", "finetuned"]["rouge1_f"] == "1.0"
    assert by_key["c2", "modality", "base"]["predicted_label"] == "photon"
    assert not any(value.startswith(("=", "+", "-", "@")) for r in rows for value in r.values())


@pytest.fixture
def rated_view(split_db):
    db_path, _ = split_db
    with opened(db_path) as conn:
        base_run, finetuned_run = make_runs(conn)
        study_id = add_study(conn, base_run, finetuned_run, reviewers=("ana", "ben"))
        for i, case in enumerate(cases_of(conn)):
            rate(conn, study_id, "ana", case["case_id"], i % 3 == 0, 1)
            rate(conn, study_id, "ben", case["case_id"], 0, i % 4 != 0)
        return compute(conn, ScoreCache(), run_pairs(conn, [(base_run, finetuned_run)])), cases_of(conn)


def test_html_report_is_self_contained_and_holds_every_table(rated_view):
    view, cases = rated_view
    page = html_report(view)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page.lower()
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?\s*(https?:|//)""", page, re.IGNORECASE)
    assert "http" not in page
    for task, report in view.report["tasks"].items():
        assert TASK_NAMES[task] in page
        accuracy = metric_table(report).loc["accuracy", "fine-tuned"]
        assert f"<td>{accuracy:.4g}</td>" in page
    assert page.count("<svg") >= 6 and "Confusion matrix, fine-tuned" in page
    assert "Clinical review" in page and "Wilson" in page and "Cohen&#x27;s kappa" in page
    assert "Methods" in page and "Wilcoxon" in page and "versions" in page
    base_run, finetuned_run = view.source["base_run"], view.source["finetuned_run"]
    assert f"runs: regimen, modality, icd10: base run {base_run}, fine-tuned run {finetuned_run}." in page
    assert not any(case["diagnosis"] in page or case["regimen"] in page for case in cases)  # no case text


def test_html_report_without_ratings_says_so():
    page = html_report(from_outputs(OUTPUTS, {"file": "outputs.csv"}))
    assert "no ratings yet" in page and "Task 2: treatment modality" in page


def test_chart_text_is_escaped():
    svg = bar_chart_svg(pd.DataFrame({"a<b": [0.5]}, index=["<script>"]), title="x & y", x_max=1.0,
                        intervals={"a<b": [(0.4, 0.6)]})
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "x &amp; y" in svg and "<path" in svg


def test_cli_writes_both_files_from_a_file_of_outputs(tmp_path):
    source = tmp_path / "outputs.csv"
    OUTPUTS.to_csv(source, index=False)
    result = rocore("evaluate", source, "--json", "--csv", tmp_path / "cases.csv",
                    "--html", tmp_path / "report.html")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["source"] == {"file": str(source)}
    assert set(report["tasks"]) == {"regimen", "modality", "icd10"}
    rows = list(csv.DictReader(io.StringIO((tmp_path / "cases.csv").read_text(encoding="utf-8-sig"))))
    assert len(rows) == 2 * len(OUTPUTS) and rows[0]["output"] == "'=HYPERLINK(\"x\")"
    assert "Task 1: treatment regimen" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_cli_writes_the_report_of_stored_runs_with_their_ratings(rated_view, split_db, tmp_path):
    db_path, _ = split_db
    view, _ = rated_view
    runs = view.source["base_run"], view.source["finetuned_run"]
    result = rocore("evaluate", "--db", db_path, "--runs", *runs, "--html", tmp_path / "report.html",
                    "--csv", tmp_path / "missing" / "cases.csv")
    assert result.returncode == 1 and "cannot write" in result.stderr and "Traceback" not in result.stderr
    result = rocore("evaluate", "--db", db_path, "--html", tmp_path / "report.html")
    assert result.returncode == 0, result.stderr
    assert "== modality:" in result.stdout
    assert "== clinical acceptability: study acceptability ==" in result.stdout and "Holm" in result.stdout
    assert "Share judged acceptable" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_review_tables_state_primary_and_secondary_figures(rated_view):
    view, _ = rated_view
    reviews = view.reviews
    shares = acceptability_table(reviews.acceptability)
    for model in ("base", "finetuned"):
        level = reviews.acceptability["rating_level"][model]
        assert shares.loc[MODEL_NAMES[model], "share"] == reviews.acceptability[model]["share"]
        assert shares.loc[MODEL_NAMES[model], "share of verdicts"] == level["share"]
    agreement = agreement_table(reviews.agreement)
    assert list(agreement.columns) == ["base", "fine-tuned", "pooled"]
    assert agreement.loc["Fleiss' kappa", "pooled"] == reviews.agreement["fleiss_kappa"]
    assert agreement.loc["items with k ratings", "fine-tuned"] == reviews.agreement["by_model"]["finetuned"][
        "n_items_fleiss"]
    checks = order_checks_table(reviews.order_checks)
    assert checks.loc["preferences for the output shown as A", "n"] == 0  # these ratings state no preference
    tests = acceptability_tests_table(reviews.acceptability)
    assert tests.loc["exact sign test, one-sided (fine-tuned > base): p", "value"] == reviews.acceptability[
        "paired"]["sign_test_p_one_sided"]
    primary = primary_table(view.primary)
    assert primary.loc[TASK_NAMES["regimen"], "endpoint"] == "acceptability"
    assert primary["p (Holm)"].tolist() == [e["p_holm"] for e in view.primary["endpoints"].values()]
    page = html_report(view)
    assert "Primary endpoints" in page and "Position and order checks" in page
    assert html.escape(view.methods_text) in page
    assert f"statsmodels {importlib.metadata.version('statsmodels')}" in view.methods_text


def test_json_figures_are_the_views(rated_view):
    view, _ = rated_view
    figures = json_figures(view)
    assert list(figures) == ["primary", "methods_text", "review"]
    assert figures["review"]["acceptability"] is view.reviews.acceptability
    assert figures["review"]["agreement"]["by_model"]["base"]["n_items"] > 0
    json.dumps(figures, allow_nan=False)
    assert json_figures(from_outputs(OUTPUTS, {"file": "outputs.csv"}))["review"] is None
