"""The optional rating scales: levels unblinded per model, compared case by case in each scale's better
direction, agreement at the ordinal level, and harm's shares; checked against scipy, sklearn and
krippendorff computed here on the same numbers."""

import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon
from sklearn.metrics import cohen_kappa_score

from rocore.evaluation.scales import (EDIT, HARM, LIKELIHOOD, LIKERT, asked_scales, distribution_table,
                                      methods_sentence, scale_figures, unblind_levels)
from rocore.evaluation.statistics import rater_agreement

BASE, FINETUNED = 11, 12


def _ratings(rows):
    """Blinded ratings from (case, reviewer, base shown as A?, base level, fine-tuned level) on one scale."""
    return pd.DataFrame([{"case_id": case, "reviewer": reviewer, "run_a_id": BASE if base_is_a else FINETUNED,
                          "edit_a": base if base_is_a else tuned, "edit_b": tuned if base_is_a else base}
                         for case, reviewer, base_is_a, base, tuned in rows])


ROWS = [("c1", "r1", True, 3, 0), ("c1", "r2", False, 2, 1), ("c2", "r1", False, 2, 0), ("c2", "r2", True, 2, 1),
        ("c3", "r1", True, 1, 1), ("c3", "r2", False, 1, 0), ("c4", "r1", False, 3, 2), ("c4", "r2", True, 3, 3),
        ("c5", "r1", True, 2, 0), ("c5", "r2", False, 3, 0), ("c6", "r1", True, 0, 0), ("c6", "r2", False, 1, 0)]


def test_levels_are_unblinded_to_the_model_that_wrote_each_output():
    levels = unblind_levels(_ratings(ROWS), {"base": BASE, "finetuned": FINETUNED}, EDIT)
    mine = levels.set_index(["case_id", "reviewer", "model"])["value"]
    for case, reviewer, _, base, tuned in ROWS:
        assert mine[(case, reviewer, "base")] == base and mine[(case, reviewer, "finetuned")] == tuned


def test_edit_level_is_compared_case_by_case_lower_being_better_and_agreement_is_ordinal():
    figures = scale_figures(_ratings(ROWS), {"base": BASE, "finetuned": FINETUNED}, [EDIT], ratings_per_case=2)["edit"]
    frame = pd.DataFrame(ROWS, columns=["case", "reviewer", "a", "base", "tuned"])
    base, tuned = frame.groupby("case")["base"].mean(), frame.groupby("case")["tuned"].mean()
    comparison = figures["comparison"]
    assert comparison["n_cases"] == 6 and comparison["better"] == "lower"
    assert comparison["base_mean"] == pytest.approx(base.mean()) and comparison["finetuned_mean"] == pytest.approx(tuned.mean())
    assert comparison["wilcoxon_p_one_sided"] == pytest.approx(
        wilcoxon(base, tuned, alternative="greater", zero_method="wilcox").pvalue)
    assert comparison["wilcoxon_p_one_sided"] < 0.05
    counts = {level["level"]: level["n"] for level in figures["distribution"]["finetuned"]["levels"]}
    assert counts == {"Acceptable as is": 7, "Minor edits": 3, "Major edits": 1, "Unacceptable": 1}
    agreement = figures["agreement"]
    items = [(case, model) for case in sorted(frame["case"].unique()) for model in ("base", "tuned")]
    data = np.array([[frame[(frame["case"] == c) & (frame["reviewer"] == r)][m].item() for c, m in items]
                     for r in ("r1", "r2")], dtype=float)
    assert agreement["level"] == "ordinal"
    assert agreement["krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=[0, 1, 2, 3]))
    assert agreement["cohen_kappa"] == pytest.approx(
        cohen_kappa_score(data[0].astype(int), data[1].astype(int), labels=[0, 1, 2, 3], weights="quadratic"))
    table = distribution_table(figures, {"base": "Base", "finetuned": "Fine-tuned"})
    assert list(table.index) == list(EDIT.levels) and table.loc["Acceptable as is", "Fine-tuned n"] == 7


def test_weighted_kappa_keeps_the_distance_of_levels_no_one_chose():
    """Levels 0 and 3 only: with the whole scale the two are three steps apart, not one."""
    ratings = pd.DataFrame({"item": ["x", "x", "y", "y", "z", "z"], "rater": ["p", "q"] * 3, "label": [0, 3, 0, 0, 3, 3]})
    whole = rater_agreement(ratings, levels=(0, 1, 2, 3))
    assert whole["cohen_kappa"] == pytest.approx(cohen_kappa_score([0, 0, 3], [3, 0, 3], labels=[0, 1, 2, 3],
                                                                   weights="quadratic"))
    with pytest.raises(ValueError, match="not levels of the scale"):
        rater_agreement(ratings, levels=(0, 1))


def test_harm_gives_shares_of_severe_and_any_harm_with_intervals_and_likelihood_only_a_distribution():
    rows = pd.DataFrame([
        {"case_id": "c1", "reviewer": "r1", "run_a_id": BASE, "harm_a": 2, "harm_b": 0, "likelihood_a": 1, "likelihood_b": None},
        {"case_id": "c1", "reviewer": "r2", "run_a_id": FINETUNED, "harm_a": 1, "harm_b": 2, "likelihood_a": 0, "likelihood_b": 2},
        {"case_id": "c2", "reviewer": "r1", "run_a_id": FINETUNED, "harm_a": 0, "harm_b": 1, "likelihood_a": None, "likelihood_b": 0},
        {"case_id": "c2", "reviewer": "r2", "run_a_id": BASE, "harm_a": 0, "harm_b": 0, "likelihood_a": None, "likelihood_b": None},
    ])
    figures = scale_figures(rows, {"base": BASE, "finetuned": FINETUNED}, [HARM, LIKELIHOOD])
    shares = figures["harm"]["shares"]
    assert shares["base"]["severe"]["share"] == 2 / 4 and shares["base"]["any"]["share"] == 3 / 4
    assert shares["finetuned"]["severe"]["share"] == 0 and shares["finetuned"]["any"]["share"] == 1 / 4
    low, high = shares["base"]["severe"]["ci95_cluster_bootstrap"]
    assert 0 <= low <= 0.5 <= high <= 1
    assert "comparison" not in figures["likelihood"]
    assert figures["likelihood"]["distribution"]["base"]["n_ratings"] == 3


def test_the_form_asks_scales_in_order_and_the_methods_name_them():
    assert asked_scales(True, True, True) == [EDIT, HARM, LIKELIHOOD, LIKERT]
    assert asked_scales(False, False, False) == []
    text = methods_sentence(asked_scales(True, True, False))
    assert "edit level (Acceptable as is, Minor edits, Major edits, Unacceptable)" in text
    assert "with its likelihood (Low, Medium, High)" in text and "'minor edits'" in text
    assert "Krippendorff's alpha (ordinal)" in text and "quadratic weights" in text
    assert "binary verdict" in methods_sentence([])
    assert "Harm:" not in methods_sentence(asked_scales(True, False, True)), "no harm figures where none was asked"
