"""The evaluation report: figures against the reference libraries, edge cases, located input errors."""

from __future__ import annotations

import importlib.metadata
import json

import numpy as np
import pandas as pd
import pytest
from rouge_score import rouge_scorer
from scipy.stats import binomtest, wilcoxon
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from rocore.evaluation.outputs import OUTPUT_COLUMNS, EvaluationInputError, read_outputs_file
from rocore.evaluation.pipeline import (
    evaluate_outputs,
    evaluate_scores,
    methods_text,
    primary_endpoints,
    score_outputs,
)
from rocore.evaluation.report import text_report

MODALITY = [  # case, gold, base, finetuned
    ("m1", "photon", "Photons", "photon"),
    ("m2", "proton", "photon", "IMPT"),
    ("m3", "electron", "photon", "electrons"),
    ("m4", "brachytherapy", "surgery", "HDR brachytherapy"),
    ("m5", "photon", "VMAT", "photon"),
    ("m6", "proton", "proton", "photon"),
    ("m7", "photon", "electron", "photon"),
    ("m8", "electron", "photon and electrons", "electron"),
]
# What scoring makes of those outputs ("other": not exactly one modality).
MODALITY_GOLD = ["photon", "proton", "electron", "brachytherapy", "photon", "proton", "photon", "electron"]
MODALITY_BASE = ["photon", "photon", "photon", "other", "photon", "proton", "electron", "other"]
MODALITY_FINETUNED = ["photon", "proton", "electron", "brachytherapy", "photon", "photon", "photon",
                      "electron"]

ICD10 = [
    ("i1", "C50.412", "C50.411", "c50412"),
    ("i2", "C61", "C61", "C61"),
    ("i3", "C34.11", "C34", "C34.12"),
    ("i4", "C71.9", "brain cancer", "C71.9"),
    ("i5", "C20", "C99.9", "C20"),
    ("i6", "C61", "C67.9", "C61"),
]

REGIMEN = [
    ("r1", "60 Gy in 20 fractions with IMRT", "Radiotherapy 70 Gy in 35 fractions",
     "60 Gy in 20 fractions with IMRT"),
    ("r2", "40 Gy in 15 fractions to the breast", "50 Gy/25 to the breast",
     "40 Gy in 15 fractions to the breast"),
    ("r3", "8 Gy in a single fraction", "20 Gy in 5 fractions", "8 Gy single fraction"),
    ("r4", "45 Gy in 25 fractions then HDR 7 Gy x 4", "45 Gy in 25 fractions", "45 Gy/25 then 7 Gy x 4 HDR"),
    ("r5", "30 Gy in 10 fractions", "30 Gy in 10 fractions", "25 Gy in 5 fractions"),
]


def frame(rows_by_task: dict[str, list[tuple]]) -> pd.DataFrame:
    return pd.DataFrame([(case, task, gold, base, finetuned)
                         for task, rows in rows_by_task.items() for case, gold, base, finetuned in rows],
                        columns=list(OUTPUT_COLUMNS))


@pytest.fixture(scope="module")
def report() -> dict:
    return evaluate_outputs(frame({"regimen": REGIMEN, "modality": MODALITY, "icd10": ICD10}))


def flags(left, right) -> list[int]:
    return [int(a == b) for a, b in zip(left, right)]


def test_report_shape_and_json_round_trip(report):
    assert list(report) == ["tasks", "methods", "notes"]
    assert list(report["tasks"]) == ["regimen", "modality", "icd10"]
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    modality = report["tasks"]["modality"]
    assert list(modality) == ["base", "finetuned", "paired"]
    assert {"n", "accuracy", "precision_macro", "recall_macro", "f1_macro", "precision_weighted",
            "recall_weighted", "f1_weighted", "per_class", "confusion_matrix",
            "ci95"} <= set(modality["base"])
    assert {"wilcoxon_p_one_sided", "mcnemar_exact_p", "n_pairs", "difference"} <= set(modality["paired"])
    icd10 = report["tasks"]["icd10"]["finetuned"]
    assert {"accuracy_category", "valid_rate", "billable_rate", "laterality_errors"} <= set(icd10)
    regimen = report["tasks"]["regimen"]
    assert {"rouge1_f", "total_dose_match", "fractions_match"} <= set(regimen["base"])
    assert "mcnemar_exact_p" not in regimen["paired"]
    assert report["methods"]["bootstrap"]["resamples"] == 2000
    assert report["notes"] == [("icd10: only 4 paired differences are non-zero: too few for the "
                                "one-sided Wilcoxon test to reach p < 0.05 (it needs 5)")]


def test_modality_figures_are_the_libraries(report):
    task = report["tasks"]["modality"]
    labels = ["photon", "proton", "electron", "brachytherapy"]
    for model, predicted in (("base", MODALITY_BASE), ("finetuned", MODALITY_FINETUNED)):
        figures = task[model]
        assert figures["n"] == 8
        assert figures["accuracy"] == accuracy_score(MODALITY_GOLD, predicted)
        for average in ("macro", "weighted"):
            expected = precision_recall_fscore_support(MODALITY_GOLD, predicted, labels=labels,
                                                       average=average, zero_division=0)
            assert [figures[f"{m}_{average}"] for m in ("precision", "recall", "f1")] == list(expected[:3])
        assert figures["confusion_matrix"] == {
            "labels": [*labels, "other"],
            "matrix": confusion_matrix(MODALITY_GOLD, predicted, labels=[*labels, "other"]).tolist()}
        right = sum(flags(MODALITY_GOLD, predicted))
        assert figures["ci95"]["accuracy"]["wilson"] == list(proportion_confint(right, 8, method="wilson"))
    base, finetuned = flags(MODALITY_GOLD, MODALITY_BASE), flags(MODALITY_GOLD, MODALITY_FINETUNED)
    paired = task["paired"]
    assert paired["wilcoxon_p_one_sided"] == wilcoxon(finetuned, base, alternative="greater",
                                                      zero_method="wilcox").pvalue
    table = confusion_matrix(base, finetuned, labels=[1, 0])
    assert paired["mcnemar_exact_p"] == mcnemar(table, exact=True).pvalue
    assert paired["difference"]["accuracy"]["mean"] == np.mean(finetuned) - np.mean(base)
    low, high = paired["difference"]["accuracy"]["ci95"]["bootstrap"]
    assert low <= paired["difference"]["accuracy"]["mean"] <= high
    finetuned_only = sum(f and not b for f, b in zip(finetuned, base))
    base_only = sum(b and not f for f, b in zip(finetuned, base))
    sign = binomtest(finetuned_only, finetuned_only + base_only, alternative="greater").pvalue
    assert paired["sign_test_p_one_sided"] == paired["exact_tests"]["accuracy"]["sign_test_p_one_sided"] == sign
    assert paired["exact_tests"]["accuracy"]["mcnemar_exact_p_two_sided"] == paired["mcnemar_exact_p"]
    low, high = paired["difference"]["accuracy"]["ci95"]["newcombe"]
    assert low <= paired["difference"]["accuracy"]["mean"] <= high


def test_six_against_one():
    """6 cases only the fine-tuned model gets right, 1 only the base: the exact tests, not Wilcoxon's 0.029."""
    rows = ([(f"a{i}", "photon", "proton", "photon") for i in range(6)] + [("b", "photon", "photon", "proton")]
            + [(f"c{i}", "photon", "photon", "photon") for i in range(13)])
    paired = evaluate_outputs(frame({"modality": rows}))["tasks"]["modality"]["paired"]
    assert paired["sign_test_p_one_sided"] == pytest.approx(0.0625)
    assert paired["sign_test_p_one_sided"] == binomtest(6, 7, alternative="greater").pvalue
    assert paired["mcnemar_exact_p"] == pytest.approx(0.125) == mcnemar([[13, 1], [6, 0]], exact=True).pvalue
    assert paired["exact_tests"]["accuracy"]["table"] == {"both_right": 13, "base_only_right": 1,
                                                          "finetuned_only_right": 6, "both_wrong": 0}
    # The normal-approximation Wilcoxon of the paper (20 cases: scipy's method='auto' is asymptotic).
    assert paired["wilcoxon_p_one_sided"] == pytest.approx(0.0294, abs=1e-4)
    assert paired["wilcoxon_role"] == "the paper's replication figure"


def test_primary_endpoints_are_holm_adjusted(report):
    primary = primary_endpoints(report)
    endpoints = primary["endpoints"]
    assert {task: e["metric"] for task, e in endpoints.items()} == {
        "regimen": "rouge1_f", "modality": "accuracy", "icd10": "accuracy"}
    raw = [report["tasks"]["regimen"]["paired"]["wilcoxon_p_one_sided"],
           report["tasks"]["modality"]["paired"]["sign_test_p_one_sided"],
           report["tasks"]["icd10"]["paired"]["sign_test_p_one_sided"]]
    assert [e["p"] for e in endpoints.values()] == raw
    assert [e["p_holm"] for e in endpoints.values()] == list(multipletests(raw, method="holm")[1])
    acceptability = {"paired": {"sign_test_p_one_sided": 0.01}}
    with_ratings = primary_endpoints(report, acceptability)["endpoints"]["regimen"]
    assert (with_ratings["metric"], with_ratings["p"]) == ("acceptability", 0.01)
    declared = primary_endpoints(report, declared={"regimen": "schedule_match"})["endpoints"]["regimen"]
    assert declared["p"] == report["tasks"]["regimen"]["paired"]["exact_tests"]["schedule_match"][
        "sign_test_p_one_sided"]
    with pytest.raises(ValueError, match="cannot be a primary endpoint"):
        primary_endpoints(report, declared={"icd10": "valid_rate"})


def test_methods_paragraph_names_the_methods_and_versions(report):
    text = methods_text(report, primary_endpoints(report), {"paired": {}})
    for phrase in ("Wilson", "Newcombe", "exact sign test", "McNemar", "Holm", "bootstrap", "Fleiss",
                   "Krippendorff", "replicate Wang et al."):
        assert phrase in text
    for package in ("scipy", "statsmodels", "scikit-learn"):
        assert f"{package} {importlib.metadata.version(package)}" in text
    assert "\n" not in text


def test_icd10_figures(report):
    gold = ["C50.412", "C61", "C34.11", "C71.9", "C20", "C61"]
    base_codes = ["C50.411", "C61", "C34", "other", "C99.9", "C67.9"]
    finetuned_codes = ["C50.412", "C61", "C34.12", "C71.9", "C20", "C61"]
    # Macro averages over the codes present in the gold answers or either model's outputs.
    labels = sorted((set(gold) | set(base_codes) | set(finetuned_codes)) - {"other"})
    task = report["tasks"]["icd10"]
    for model, predicted in (("base", base_codes), ("finetuned", finetuned_codes)):
        expected = precision_recall_fscore_support(gold, predicted, labels=labels, average="macro",
                                                   zero_division=0)
        assert task[model]["classes_averaged"] == labels and task[model]["absent_classes"] == []
        assert [task[model][f"{m}_macro"] for m in ("precision", "recall", "f1")] == list(expected[:3])
        assert task[model]["accuracy"] == accuracy_score(gold, predicted)
    assert task["base"]["accuracy_category"] == 3 / 6
    assert task["base"]["valid_rate"] == 4 / 6 and task["base"]["billable_rate"] == 3 / 6
    assert task["base"]["laterality_errors"] == 1 and task["finetuned"]["laterality_errors"] == 1
    assert task["base"]["laterality_error_rate"] == 1 / 6


def test_regimen_figures(report):
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    rouge = {model: [scorer.score(target=row[1], prediction=row[index])["rouge1"].fmeasure for row in REGIMEN]
             for model, index in (("base", 2), ("finetuned", 3))}
    task = report["tasks"]["regimen"]
    assert task["base"]["rouge1_f"] == np.mean(rouge["base"])
    assert task["finetuned"]["rouge1_f"] == np.mean(rouge["finetuned"])
    assert task["paired"]["wilcoxon_p_one_sided"] == wilcoxon(
        rouge["finetuned"], rouge["base"], alternative="greater", zero_method="wilcox").pvalue
    assert task["paired"]["tested_metric"] == "rouge1_f"
    assert task["base"]["accuracy"] == 1 / 5 and task["finetuned"]["accuracy"] == 2 / 5
    assert task["base"]["total_dose_match"] == 2 / 5 and task["finetuned"]["total_dose_match"] == 4 / 5
    assert task["finetuned"]["schedule_match"] == 4 / 5 and task["base"]["schedule_match"] == 1 / 5


def test_scores_can_be_stored_and_evaluated_later():
    outputs = frame({"modality": MODALITY, "icd10": ICD10})
    scores = score_outputs(outputs)
    assert len(scores) == 2 * (len(MODALITY) + len(ICD10))
    assert evaluate_scores(scores) == evaluate_outputs(outputs)


def test_intervals_do_not_depend_on_other_tasks(report):
    alone = evaluate_outputs(frame({"modality": MODALITY}))
    assert alone["tasks"]["modality"] == report["tasks"]["modality"]
    other_seed = evaluate_outputs(frame({"modality": MODALITY}), seed=1)["tasks"]["modality"]
    assert other_seed["paired"]["difference"] != alone["tasks"]["modality"]["paired"]["difference"]


def test_missing_outputs_leave_the_case_out_and_are_counted():
    rows = [*MODALITY, ("m9", "photon", None, "photon"), ("m10", "proton", "proton", float("nan"))]
    result = evaluate_outputs(frame({"modality": rows}))
    paired = result["tasks"]["modality"]["paired"]
    assert paired["n_pairs"] == 8
    assert paired["n_dropped"] == {"no_base_output": 1, "no_finetuned_output": 1}
    assert result["tasks"]["modality"]["base"]["n"] == 8
    assert paired["dropped_cases"] == {"no_base_output": ["m9"], "no_finetuned_output": ["m10"]}
    assert result["notes"] == ["modality: 1 case(s) without a base output (no output row) left out: m9",
                               "modality: 1 case(s) without a fine-tuned output (no output row) left out: m10"]


def test_an_empty_output_is_a_wrong_answer_not_a_missing_one():
    rows = [*MODALITY, ("m9", "photon", "", "photon"), ("m10", "proton", "   ", "proton")]
    result = evaluate_outputs(frame({"modality": rows}))
    task = result["tasks"]["modality"]
    assert task["paired"]["n_pairs"] == 10 and task["paired"]["n_dropped"] == {
        "no_base_output": 0, "no_finetuned_output": 0}
    assert task["base"]["accuracy"] == accuracy_score(MODALITY_GOLD + ["photon", "proton"],
                                                      MODALITY_BASE + ["other", "other"])


def test_identical_outputs_give_p_one_with_a_note():
    rows = [(case, gold, finetuned, finetuned) for case, gold, _, finetuned in MODALITY]
    result = evaluate_outputs(frame({"modality": rows}))
    paired = result["tasks"]["modality"]["paired"]
    assert paired["wilcoxon_p_one_sided"] == 1.0 and paired["mcnemar_exact_p"] == 1.0
    assert paired["difference"]["accuracy"]["ci95"]["bootstrap"] == [0.0, 0.0]
    assert "modality: all paired differences are zero: Wilcoxon p = 1.0" in result["notes"]
    json.dumps(result, allow_nan=False)


def test_one_class_only():
    """The filtered macro-F1 example: a perfect model shown on photon cases only has macro-F1 1.0."""
    rows = [(f"c{i}", "photon", "photon", "photon") for i in range(4)]
    result = evaluate_outputs(frame({"modality": rows}))
    finetuned = result["tasks"]["modality"]["finetuned"]
    assert finetuned["accuracy"] == 1.0
    assert finetuned["f1_macro"] == 1.0 == precision_recall_fscore_support(
        ["photon"] * 4, ["photon"] * 4, average="macro", zero_division=0)[2]
    assert finetuned["classes_averaged"] == ["photon"]
    assert finetuned["absent_classes"] == ["proton", "electron", "brachytherapy"]
    assert any("proton, electron, brachytherapy are in neither" in note for note in result["notes"])
    assert finetuned["ci95"]["accuracy"]["bootstrap"] == [1.0, 1.0]
    assert finetuned["ci95"]["f1_macro"]["bootstrap"] == [1.0, 1.0]
    json.dumps(result, allow_nan=False)


def test_regimen_gold_without_a_dose_is_left_out_of_dose_scores():
    rows = [("r1", "Observation only", "60 Gy/30", "Observation"),
            ("r2", "No radiotherapy", "8 Gy x 1", "No radiotherapy")]
    result = evaluate_outputs(frame({"regimen": rows}))
    task = result["tasks"]["regimen"]
    assert task["finetuned"]["total_dose_match"] is None and task["base"]["n_dose_scored"] == 0
    assert task["paired"]["difference"]["total_dose_match"] is None
    assert "regimen: total_dose_match: no case has a score (no gold regimen states a dose)" in result["notes"]
    assert task["finetuned"]["rouge1_f"] > task["base"]["rouge1_f"]
    json.dumps(result, allow_nan=False)


def test_a_task_without_pairs_is_noted_and_nothing_to_evaluate_is_an_error():
    result = evaluate_outputs(frame({"modality": MODALITY,
                                     "icd10": [("i1", "C61", "C61", None), ("i2", "C20", None, "C20")]}))
    assert list(result["tasks"]) == ["modality"]
    assert "icd10: no case has outputs from both models; not evaluated" in result["notes"]
    with pytest.raises(ValueError, match="no cases to evaluate"):
        evaluate_outputs(frame({"icd10": [("i1", "C61", "C61", None)]}))


def test_empty_input():
    with pytest.raises(ValueError, match="^no cases to evaluate$"):
        evaluate_outputs(pd.DataFrame(columns=list(OUTPUT_COLUMNS)))
    with pytest.raises(ValueError, match="^no cases to evaluate$"):
        evaluate_scores(pd.DataFrame(columns=["case_id", "task", "model"]))


def test_bad_frame_lists_every_located_problem():
    bad = frame({"modality": [("m1", "photon", "photon", "photon"), ("m1", "photon", "x", "y"),
                              ("", "surgery", "photon", "photon")]})
    bad.loc[3] = ["m4", "dose", "60 Gy", "60 Gy", "60 Gy"]
    with pytest.raises(EvaluationInputError) as error:
        evaluate_outputs(bad)
    assert str(error.value).splitlines() == [
        "outputs: row 2: column 'case_id': case 'm1' has a second modality row (the first is row 1)",
        "outputs: row 3: column 'case_id': is empty; every output needs its case id",
        ("outputs: row 3: column 'gold': 'surgery' is not a treatment modality; expected one of "
         "photon, proton, electron, brachytherapy (or a synonym such as IMRT, IMPT, electrons, HDR)"),
        "outputs: row 4: column 'task': 'dose' is not one of regimen, modality, icd10",
    ]
    assert isinstance(error.value, ValueError) and len(error.value.problems) == 4


def write(tmp_path, text: str, name: str = "outputs.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_outputs_file(tmp_path):
    path = write(tmp_path, "Case_ID,Task,gold,base,finetuned\n"
                           "P1,modality,photon,Photons,photon\n"
                           "P1,ICD10,C61,,C61\n"
                           'P1,regimen,"60 Gy in 20 fractions, IMRT",70 Gy/35,60 Gy/20\n'
                           "P2, icd10 ,c20,C20,C20\n")
    outputs = read_outputs_file(path, extracted=True)
    assert outputs.columns.tolist() == list(OUTPUT_COLUMNS)
    assert outputs["task"].tolist() == ["modality", "icd10", "regimen", "icd10"]
    assert outputs["base"].tolist() == ["Photons", "", "70 Gy/35", "C20"]
    assert outputs.loc[2, "gold"] == "60 Gy in 20 fractions, IMRT"
    result = evaluate_outputs(outputs)
    icd10 = result["tasks"]["icd10"]
    assert icd10["paired"]["n_dropped"] == {"no_base_output": 0, "no_finetuned_output": 0}
    assert icd10["base"]["accuracy"] == 1 / 2, "the empty cell is an empty output: a wrong answer"


def test_read_outputs_file_locates_bad_values(tmp_path):
    path = write(tmp_path, "case_id,task,gold,base,finetuned\n"
                           "P1,modality,photon,photon,photon\n"
                           "P2,x,photon,photon,photon\n"
                           "P3,icd10,C99.9,C61,C61\n"
                           "P4,icd10,,C61,C61\n"
                           "P5,,photon,photon,photon\n")
    with pytest.raises(EvaluationInputError) as error:
        read_outputs_file(path)
    assert str(error.value).splitlines() == [
        f"{path}: row 2: column 'task': 'x' is not one of regimen, modality, icd10",
        f"{path}: row 3: column 'gold': 'C99.9' is not a valid ICD-10-CM code",
        f"{path}: row 4: column 'gold': is empty; expected the gold answer",
        f"{path}: row 5: column 'task': is empty; expected one of regimen, modality, icd10",
    ]


def test_read_outputs_file_missing_columns_and_empty_files(tmp_path):
    with pytest.raises(EvaluationInputError) as error:
        read_outputs_file(write(tmp_path, "case_id,task,gold\nP1,modality,photon\n"))
    assert [p.message for p in error.value.problems] == [
        "has no column 'base'; expected columns case_id, task, gold, base, finetuned",
        "has no column 'finetuned'; expected columns case_id, task, gold, base, finetuned"]
    with pytest.raises(EvaluationInputError, match="is empty"):
        read_outputs_file(write(tmp_path, "", "empty.csv"))
    with pytest.raises(EvaluationInputError, match="has a header but no data rows"):
        read_outputs_file(write(tmp_path, "case_id,task,gold,base,finetuned\n", "header.csv"))
    with pytest.raises(EvaluationInputError, match="cannot be read"):
        read_outputs_file(tmp_path / "absent.csv")


def test_read_outputs_file_reports_ragged_rows(tmp_path):
    path = write(tmp_path, "case_id,task,gold,base,finetuned\nP1,modality,photon,photon\n")
    with pytest.raises(EvaluationInputError, match=r"row 1: has 4 fields, but the header has 5"):
        read_outputs_file(path)


def test_format_tables(report):
    text = text_report(report)
    assert "== modality: 8 paired cases ==" in text
    assert "accuracy: exact sign test one-sided p = " in text and "exact McNemar two-sided p = " in text
    assert "Wilcoxon one-sided (rouge1_f, fine-tuned > base)" in text
    assert "Wilcoxon one-sided (accuracy, paper's replication figure)" in text
    assert "confusion matrix, finetuned (rows gold, columns output):" in text
    notes = text_report(evaluate_outputs(frame({"modality": MODALITY[:1]})))
    assert "\nnotes:\n- modality: " in notes
    assert "\n- modality: all paired differences are zero: Wilcoxon p = 1.0\n" in notes
