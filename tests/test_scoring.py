"""Per-case scores: each against the label functions, the code set, the parser or rouge-score itself."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from rouge_score import rouge_scorer

from rocore.data.labels import LabelError, icd10_status
from rocore.evaluation.scoring import _SIDE_CHARACTER, OTHER, SCORE_COLUMNS, is_laterality_error, rouge1_f, score_icd10, score_modality, score_regimen, score_task


def test_modality_matches_after_normalisation_and_unreadable_output_is_other():
    scores = score_modality(
        ["photon", "proton", "brachytherapy", "electron", "photon"],
        ["Photons (VMAT)", " IMPT", "HDR brachy", "photon and electron boost", None],
    )
    assert scores["predicted_label"].tolist() == ["photon", "proton", "brachytherapy", OTHER, OTHER]
    assert scores["correct"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_modality_gold_that_is_no_modality_raises():
    with pytest.raises(LabelError, match="gold answer 'surgery'"):
        score_modality(["surgery"], ["photon"])


def test_icd10_scores():
    scores = score_icd10(
        ["C50.412", "C61", "C34.11", "C61", "C20"],
        ["c50412", "C61.9", "C34", "prostate cancer", "Z99.99"],
    )
    assert scores["predicted_label"].tolist() == ["C50.412", "C61.9", "C34", OTHER, "Z99.99"]
    assert scores["correct"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert scores["category_match"].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    # C34 is a category of the code set (valid, not billable); C61.9 and Z99.99 are no codes.
    assert scores["valid"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert scores["billable"].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert scores["laterality_error"].tolist() == [0.0] * 5


@pytest.mark.parametrize("gold, predicted, expected", [
    ("C50.411", "C50.412", True),    # breast, 6th character 1 right / 2 left
    ("C34.12", "C34.11", True),      # lung upper lobe, 5th character
    ("C49.21", "C49.22", True),      # lower limb soft tissue
    ("C44.212", "C44.219", True),    # skin of ear: sides are 2 and 9
    ("D05.11", "D05.12", True),      # DCIS
    ("C56.1", "C56.2", True),        # ovary, 4th character
    ("C50.A1", "C50.A2", True),      # inflammatory breast cancer, 5th character
    ("C79.01", "C79.02", True),      # kidney metastasis
    ("D17.23", "D17.24", True),      # lipoma of leg: 3 right, 4 left
    ("C79.51", "C79.52", False),     # bone vs bone marrow: one digit apart, not a side
    ("C79.31", "C79.32", False),     # brain vs meninges
    ("C50.011", "C50.021", False),   # female vs male
    ("C50.411", "C50.419", False),   # unspecified side is too unspecific, not the wrong side
    ("C50.411", "C50.511", False),   # another quadrant
    ("C50.411", "C50.411", False),
    ("C50.411", "C50.41", False),
    ("C61", "C62", False),
    ("C99.1", "C99.2", False),       # no codes at all
])
def test_laterality_error(gold, predicted, expected):
    assert is_laterality_error(gold, predicted) is expected


def test_side_table_names_categories_of_the_code_set():
    assert all(icd10_status(prefix) == "category" for prefix in _SIDE_CHARACTER)


def test_icd10_laterality_error_column():
    scores = score_icd10(["C50.411", "C34.11", "C79.51"], ["C50.412", "c34.12", "C79.52"])
    assert scores["laterality_error"].tolist() == [1.0, 1.0, 0.0]
    assert scores["correct"].tolist() == [0.0, 0.0, 0.0]


PAIRS = [
    ("60 Gy in 20 fractions to the prostate with IMRT", "60 Gy/20 fx IMRT to prostate"),
    ("40 Gy in 15 fractions to the left breast", "40 Gy in 15 fractions to the left breast"),
    ("45 Gy in 25 fractions then HDR 7 Gy x 4", "45 Gy in 25 fraction, then HDR brachytherapy boost"),
    ("8 Gy in a single fraction", "Recommend surgery."),
    ("", "60 Gy"),
]


@pytest.mark.parametrize("gold, predicted", PAIRS)
def test_rouge1_is_rouge_score_itself(gold, predicted):
    reference = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    expected = reference.score(target=gold, prediction=predicted)["rouge1"].fmeasure
    assert rouge1_f(gold, predicted) == expected
    assert rouge1_f(gold, predicted) == expected  # the remembered tokens give the same score


def test_regimen_scores():
    scores = score_regimen(
        ["60 Gy in 20 fractions", "45 Gy/25 then HDR 7 Gy x 4", "45 Gy/25 then HDR 7 Gy x 4",
         "60 Gy in 30 fractions", "Observation", "60 Gy in 20 Fractions"],
        ["6000 cGy/20", "45 Gy in 25 fx", "45 Gy in 25 fx then 7 Gy x 4 HDR",
         "No radiotherapy", "60 Gy/30", "60  gy in 20 fractions"],
    )
    assert scores.columns.tolist() == list(SCORE_COLUMNS["regimen"])
    assert scores["correct"].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert scores["total_dose_match"].tolist()[:4] == [1.0, 1.0, 1.0, 0.0]
    assert scores["fractions_match"].tolist()[:4] == [1.0, 1.0, 1.0, 0.0]
    assert scores["schedule_match"].tolist()[:4] == [1.0, 0.0, 1.0, 0.0]
    # A gold text without a dose has nothing to match: undefined, not wrong.
    assert all(math.isnan(scores.loc[4, c])
               for c in ("total_dose_match", "fractions_match", "schedule_match"))
    assert scores.loc[5, "schedule_match"] == 1.0


def test_regimen_rouge_column_is_rouge_score():
    gold, predicted = zip(*PAIRS)
    reference = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    expected = [reference.score(target=g, prediction=p)["rouge1"].fmeasure for g, p in PAIRS]
    assert score_regimen(list(gold), list(predicted))["rouge1_f"].tolist() == expected


@pytest.mark.parametrize("task, gold, predicted", [
    ("regimen", ["60 Gy/20"] * 3, ["60 Gy/20", None, "50 Gy"]),
    ("modality", ["photon"] * 3, ["photon", None, "protons"]),
    ("icd10", ["C61"] * 3, ["C61", None, "C50.412"]),
])
def test_score_task_gives_floats_in_unit_interval_in_input_order(task, gold, predicted):
    scores = score_task(task, gold, predicted)
    assert len(scores) == 3
    for column in SCORE_COLUMNS[task]:
        assert scores[column].dtype == "float64"
        assert scores[column].dropna().between(0, 1).all()
    assert scores["correct"].tolist() == [1.0, 0.0, 0.0]


def test_score_task_rejects_unknown_task_and_unequal_lengths():
    with pytest.raises(ValueError, match="task 'dose' is not one of regimen, modality, icd10"):
        score_task("dose", [], [])
    with pytest.raises(ValueError, match="2 gold answers but 1 predictions"):
        score_task("modality", ["photon", "proton"], ["photon"])


def test_empty_input_gives_empty_table():
    assert isinstance(score_regimen([], []), pd.DataFrame)
    assert score_regimen([], []).empty and score_icd10([], []).empty


def test_a_modality_that_is_only_ruled_out_does_not_score_as_that_modality():
    scores = score_modality(["proton", "photon"], ["Not a candidate for protons.",
                                                   "Protons are not indicated; photon IMRT is preferred."])
    assert scores["predicted_label"].tolist() == [OTHER, "photon"]
    assert scores["correct"].tolist() == [0.0, 1.0]
