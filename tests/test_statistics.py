"""Aggregate metrics and tests, each checked against the reference library on hand-made data."""

from __future__ import annotations

import json

import krippendorff
import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, bootstrap, wilcoxon
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from rocore.evaluation.statistics import (
    acceptability,
    classification_metrics,
    clustered_share,
    compare_means,
    confusion,
    holm,
    macro_f1_bootstrap,
    mcnemar_exact,
    newcombe_paired_interval,
    paired_binary_power,
    paired_bootstrap,
    plan_paired_study,
    rater_agreement,
    resample_counts,
    share_with_test,
    wilcoxon_greater,
    wilson_interval,
)

LABELS = ["photon", "proton", "electron", "brachytherapy"]
GOLD = ["photon", "photon", "photon", "proton", "proton", "electron", "brachytherapy", "photon",
        "electron", "photon"]
PREDICTED = ["photon", "proton", "photon", "proton", "other", "electron", "photon", "photon",
             "photon", "brachytherapy"]


def test_classification_metrics_are_sklearns():
    result = classification_metrics(GOLD, PREDICTED, LABELS)
    assert result["accuracy"] == accuracy_score(GOLD, PREDICTED)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            GOLD, PREDICTED, labels=LABELS, average=average, zero_division=0)
        assert (result[f"precision_{average}"], result[f"recall_{average}"], result[f"f1_{average}"]) == (
            precision, recall, f1)
    precision, recall, f1, support = precision_recall_fscore_support(
        GOLD, PREDICTED, labels=LABELS, zero_division=0)
    assert list(result["per_class"]) == LABELS
    for i, label in enumerate(LABELS):
        assert result["per_class"][label] == {
            "precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
    assert result["notes"] == []


def test_predictions_outside_the_labels_count_only_against_recall():
    gold, predicted = ["C50.412", "C61", "C61"], ["C50.411", "C61", "Z99"]
    labels = sorted(set(gold))
    result = classification_metrics(gold, predicted, labels)
    expected = precision_recall_fscore_support(gold, predicted, labels=labels, average="macro",
                                               zero_division=0)
    assert (result["precision_macro"], result["recall_macro"], result["f1_macro"]) == expected[:3]
    assert result["per_class"]["C61"]["recall"] == 0.5


def test_macro_averages_cover_the_classes_in_gold_or_output():
    gold, predicted = ["photon"] * 3, ["photon", "photon", "proton"]
    result = classification_metrics(gold, predicted, LABELS)
    assert result["per_class"]["electron"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert result["classes_averaged"] == ["photon", "proton"]
    assert result["absent_classes"] == ["electron", "brachytherapy"]
    assert result["f1_macro"] == f1_score(gold, predicted, average="macro", zero_division=0)
    assert result["notes"] == [("electron, brachytherapy are in neither the gold answers nor the outputs of "
                                "these cases: left out of the macro averages")]
    perfect = classification_metrics(["photon"] * 4, ["photon"] * 4, LABELS)
    assert perfect["f1_macro"] == 1.0 and perfect["accuracy"] == 1.0
    other_model = classification_metrics(["photon"] * 4, ["photon"] * 4, LABELS, also_seen=["proton"] * 4)
    assert other_model["classes_averaged"] == ["photon", "proton"] and other_model["f1_macro"] == 0.5


def test_macro_f1_bootstrap_recomputes_sklearn_on_resampled_cases():
    base = ["photon", "photon", "proton", "proton", "other", "electron", "photon", "photon", "photon", "electron"]
    result = macro_f1_bootstrap(GOLD, base, PREDICTED, LABELS, resamples=400, seed=3)
    n = len(GOLD)
    expected = []
    rng = np.random.default_rng(3)  # drawn in chunks of 250 resamples, as the function draws them
    for counts in np.vstack([resample_counts(rng, n, 250), resample_counts(rng, n, 150)]):
        rows = np.repeat(np.arange(n), counts)
        gold = [GOLD[i] for i in rows]
        f1s = [f1_score(gold, [predicted[i] for i in rows], labels=LABELS, average="macro", zero_division=0)
               for predicted in (base, PREDICTED)]
        expected.append([*f1s, f1s[1] - f1s[0]])
    low, high = np.percentile(np.array(expected), [2.5, 97.5], axis=0)
    for i, name in enumerate(("base", "finetuned", "difference")):
        assert result[name] == pytest.approx([low[i], high[i]])


def test_confusion_is_sklearns():
    labels = [*LABELS, "other"]
    result = confusion(GOLD, PREDICTED, labels)
    assert result == {"labels": labels,
                      "matrix": confusion_matrix(GOLD, PREDICTED, labels=labels).tolist()}


@pytest.mark.parametrize("k, n", [(0, 5), (3, 10), (10, 10), (57, 200)])
def test_wilson_is_statsmodels(k, n):
    assert wilson_interval(k, n) == list(proportion_confint(k, n, alpha=0.05, method="wilson"))


def test_wilson_without_cases_is_none():
    assert wilson_interval(0, 0) is None


def _scipy_paired_percentile(base, finetuned, resamples=2000):
    def statistic(b, f, axis=-1):
        return np.stack([b.mean(axis=axis), f.mean(axis=axis), (f - b).mean(axis=axis)])
    result = bootstrap((np.asarray(base, float), np.asarray(finetuned, float)), statistic, paired=True,
                       vectorized=True, n_resamples=resamples, method="percentile",
                       rng=np.random.default_rng(1))
    return result.confidence_interval


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_paired_bootstrap_agrees_with_scipy(kind):
    rng = np.random.default_rng(7)
    if kind == "binary":
        base = (rng.random(300) < 0.4).astype(float)
        finetuned = np.where(rng.random(300) < 0.7, 1.0, base)
    else:
        base = rng.random(300)
        finetuned = np.clip(base + rng.normal(0.1, 0.2, 300), 0, 1)
    ours = paired_bootstrap(base, finetuned, resamples=4000, seed=3)
    reference = _scipy_paired_percentile(base, finetuned, resamples=4000)
    for i, name in enumerate(("base", "finetuned", "difference")):
        # Two Monte Carlo estimates of the same percentiles: equal up to resampling noise (a 90%
        # interval would be about 0.01 narrower on each side).
        assert ours[name] == pytest.approx([reference.low[i], reference.high[i]], abs=0.004)
        assert ours[name][0] < [base.mean(), finetuned.mean(), (finetuned - base).mean()][i] < ours[name][1]


def test_paired_bootstrap_is_seeded():
    base, finetuned = np.linspace(0, 1, 50), np.linspace(0.2, 1, 50) ** 2
    assert paired_bootstrap(base, finetuned, seed=5) == paired_bootstrap(base, finetuned, seed=5)
    assert paired_bootstrap(base, finetuned, seed=5) != paired_bootstrap(base, finetuned, seed=6)


def test_compare_means_leaves_out_undefined_cases_and_adds_wilson_for_proportions():
    result = compare_means([1, 0, np.nan, 1], [1, 1, np.nan, 1], resamples=200)
    assert result["n"] == 3
    assert result["base"]["mean"] == 2 / 3 and result["finetuned"]["mean"] == 1.0
    assert result["difference"]["mean"] == 1.0 - 2 / 3
    assert result["base"]["ci95"]["wilson"] == list(proportion_confint(2, 3, alpha=0.05, method="wilson"))
    continuous = compare_means([0.2, 0.5], [0.4, 0.5], resamples=200)
    assert set(continuous["base"]["ci95"]) == {"bootstrap"}
    assert compare_means([np.nan], [1.0]) == {"n": 0, "base": None, "finetuned": None, "difference": None}


def test_wilcoxon_is_scipys():
    finetuned = [0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.5, 0.9]
    base = [0.5, 0.8, 0.4, 0.6, 0.65, 0.3, 0.5, 0.2]
    expected = wilcoxon(finetuned, base, alternative="greater", zero_method="wilcox")
    result = wilcoxon_greater(finetuned, base)
    assert (result["statistic"], result["p"]) == (expected.statistic, expected.pvalue)
    assert result["n_nonzero"] == 6 and result["notes"] == []


def test_wilcoxon_all_differences_zero():
    result = wilcoxon_greater([1, 0, 1], [1, 0, 1])
    assert result["p"] == 1.0 and result["statistic"] is None
    assert result["notes"] == ["all paired differences are zero: Wilcoxon p = 1.0"]


def test_wilcoxon_too_few_differences_is_noted():
    result = wilcoxon_greater([1, 1, 0, 1], [0, 1, 0, 0])
    assert result["p"] == wilcoxon([1, 1, 0, 1], [0, 1, 0, 0], alternative="greater",
                                   zero_method="wilcox").pvalue
    assert any("only 2 paired differences are non-zero" in note for note in result["notes"])


def test_tests_refuse_empty_input():
    with pytest.raises(ValueError, match="no cases to evaluate"):
        wilcoxon_greater([], [])
    with pytest.raises(ValueError, match="no cases to evaluate"):
        mcnemar_exact([], [])
    with pytest.raises(ValueError, match="no cases to evaluate"):
        paired_bootstrap([], [])


def test_mcnemar_is_statsmodels_exact():
    base = [1, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    finetuned = [1, 1, 1, 1, 0, 1, 1, 0, 1, 1]
    result = mcnemar_exact(finetuned, base)
    # rows: base right, base wrong; columns: fine-tuned right, fine-tuned wrong
    table = [[3, 1], [5, 1]]
    assert result["p"] == mcnemar(table, exact=True).pvalue
    assert result["table"] == {"both_right": 3, "base_only_right": 1, "finetuned_only_right": 5,
                               "both_wrong": 1}


def test_six_against_one_exact_sign_test_and_mcnemar():
    """6 cases only the fine-tuned model got right, 1 only the base: the issue's worked example."""
    finetuned, base = [1] * 6 + [0] + [1] * 3, [0] * 6 + [1] + [1] * 3
    result = mcnemar_exact(finetuned, base)
    assert result["p_one_sided"] == binomtest(6, 7, alternative="greater").pvalue == pytest.approx(0.0625)
    assert result["p"] == mcnemar([[3, 1], [6, 0]], exact=True).pvalue == pytest.approx(0.125)
    assert result["n_discordant"] == 7
    none_discordant = mcnemar_exact([1, 0], [1, 0])
    assert none_discordant["p"] == none_discordant["p_one_sided"] == 1.0


def test_newcombe_paired_interval_matches_the_published_example():
    """Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), chapter 8: Cavo et
    al. (2012), [[59, 6], [16, 80]]: estimate -0.0621, Newcombe square-and-add 95% CI -0.1186 to -0.0046."""
    low, high = newcombe_paired_interval(59, 6, 16, 80)
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)
    assert newcombe_paired_interval(0, 0, 0, 0) is None
    low, high = newcombe_paired_interval(10, 0, 0, 0)
    assert low < 0 < high and -1 <= low and high <= 1


def test_compare_means_gives_newcombe_for_the_difference_of_proportions():
    base, finetuned = [1, 1, 0, 0, 1, 0, 0, 0, 1, 0], [1, 1, 1, 1, 0, 1, 1, 0, 1, 1]
    result = compare_means(base, finetuned, resamples=200)
    # both right 3, only fine-tuned 5, only base 1, neither 1
    assert result["difference"]["ci95"]["newcombe"] == newcombe_paired_interval(3, 5, 1, 1)
    assert "newcombe" not in compare_means([0.2, 0.5], [0.3, 0.9], resamples=50)["difference"]["ci95"]


def test_wilson_zero_of_sixty_is_not_zero_width():
    low, high = wilson_interval(0, 60)
    assert low == pytest.approx(0, abs=1e-12) and high == pytest.approx(0.0602, abs=1e-4)
    assert [low, high] == list(proportion_confint(0, 60, method="wilson"))


def test_holm_is_statsmodels():
    pvalues = {"regimen": 0.01, "modality": 0.04, "icd10": 0.03, "none": None}
    adjusted = holm(pvalues)
    expected = multipletests([0.01, 0.04, 0.03], method="holm")[1]
    assert [adjusted[k] for k in ("regimen", "modality", "icd10")] == list(expected)
    assert adjusted["none"] is None


def test_share_with_test_is_wilson_and_scipy_binomtest():
    result = share_with_test(14, 20)
    assert result["ci95_wilson"] == list(proportion_confint(14, 20, method="wilson"))
    assert result["binomial_p_two_sided"] == binomtest(14, 20).pvalue
    assert share_with_test(0, 0)["share"] is None


def test_resample_counts_draw_cases_uniformly_with_replacement():
    counts = resample_counts(np.random.default_rng(0), 7, 4000)
    assert counts.shape == (4000, 7) and (counts.sum(axis=1) == 7).all()
    assert counts.mean(axis=0) == pytest.approx(np.ones(7), abs=0.05)


def test_clustered_share_resamples_whole_cases():
    acceptable, verdicts = [2, 0, 1, 3, 2], [3, 2, 2, 3, 3]
    result = clustered_share(acceptable, verdicts, resamples=500, seed=1)
    assert result["share"] == 8 / 13 and result["n_ratings"] == 13 and result["n_cases"] == 5
    rng = np.random.default_rng(1)
    shares = [w @ np.array(acceptable) / (w @ np.array(verdicts))
              for w in np.vstack([resample_counts(rng, 5, 250), resample_counts(rng, 5, 250)])]
    assert result["ci95_cluster_bootstrap"] == pytest.approx(list(np.percentile(shares, [2.5, 97.5])))


def _brute_force_power(n: int, p10: float, p01: float, alpha: float) -> float:
    """Power of scipy's exact two-sided binomial test on discordant pairs, summed over every table."""
    from scipy.stats import multinomial
    total = 0.0
    for a in range(n + 1):
        for b in range(n + 1 - a):
            d = a + b
            if d and binomtest(a, d).pvalue <= alpha:
                total += multinomial.pmf([a, b, n - d], n, [p10, p01, 1 - p10 - p01])
    return total


def test_exact_power_matches_enumeration_with_scipy_binomtest():
    for n in (12, 25):
        assert paired_binary_power(n, 0.4, 0.8, 0.5) == pytest.approx(_brute_force_power(n, 0.45, 0.05, 0.05))
    # Independent outcomes by default: p10 = 0.8 * 0.6, p01 = 0.4 * 0.2.
    assert paired_binary_power(20, 0.4, 0.8) == pytest.approx(_brute_force_power(20, 0.48, 0.08, 0.05))


def test_plan_finds_the_smallest_n_reaching_the_power():
    plan = plan_paired_study(0.5, 0.7, ratings_per_case=3)
    n = plan["cases"]
    assert plan["achieved_power"] >= 0.8 > paired_binary_power(n - 1, 0.5, 0.7)
    assert all(paired_binary_power(m, 0.5, 0.7) < 0.8 for m in range(n - 30, n))
    assert plan["ratings"] == 3 * n and plan["discordant_assumed_independent"]
    assert plan["test"] == "exact McNemar, two-sided" and "scipy.stats.binom" in plan["method"]
    correlated = plan_paired_study(0.5, 0.7, discordant=0.3)
    assert correlated["cases"] < n
    assert any("odd" in note for note in plan_paired_study(0.5, 0.7, ratings_per_case=2)["notes"])
    with pytest.raises(ValueError, match="must differ"):
        plan_paired_study(0.5, 0.5)
    with pytest.raises(ValueError, match="discordant share"):
        plan_paired_study(0.5, 0.7, discordant=0.1)


def test_mcnemar_needs_binary_outcomes():
    with pytest.raises(ValueError, match="0/1"):
        mcnemar_exact([0.5], [1.0])


def test_acceptability():
    base = {"a": 1, "b": 0, "c": 0, "d": 1, "e": 0, "f": 0, "g": 1, "only_base": 1}
    finetuned = pd.Series({"a": 1, "b": 1, "c": 1, "d": 1, "e": 0, "f": 1, "g": 1, "h": 1, "i": 1})
    result = acceptability(base, finetuned, resamples=500)
    paired_base, paired_finetuned = [1, 0, 0, 1, 0, 0, 1], [1, 1, 1, 1, 0, 1, 1]
    assert result["base"]["n"] == 7 and result["base"]["acceptable"] == 3
    assert result["base"]["share"] == 3 / 7 and result["finetuned"]["share"] == 6 / 7
    assert result["finetuned"]["ci95"]["wilson"] == list(proportion_confint(6, 7, method="wilson"))
    assert result["paired"]["wilcoxon_p_one_sided"] == wilcoxon(
        paired_finetuned, paired_base, alternative="greater", zero_method="wilcox").pvalue
    assert result["paired"]["mcnemar_exact_p"] == mcnemar([[3, 0], [3, 1]], exact=True).pvalue
    assert result["paired"]["sign_test_p_one_sided"] == binomtest(3, 3, alternative="greater").pvalue
    assert result["paired"]["difference"]["share"]["ci95"]["newcombe"] == newcombe_paired_interval(3, 3, 0, 1)
    assert result["paired"]["n_dropped"] == {"no_base_verdict": 2, "no_finetuned_verdict": 1}
    assert result["paired"]["difference"]["share"]["mean"] == 6 / 7 - 3 / 7
    assert "2 case(s) without a verdict on the base output left out" in result["notes"]
    json.dumps(result, allow_nan=False)


def test_acceptability_refuses_no_pairs_and_non_verdicts():
    with pytest.raises(ValueError, match="no cases to evaluate"):
        acceptability({"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match="1/0"):
        acceptability({"a": 3}, {"a": 1})


def _long(table: dict[str, list]) -> pd.DataFrame:
    """{rater: labels by item} -> the long (item, rater, label) table, None = not rated."""
    return pd.DataFrame([(item, rater, label) for rater, labels in table.items()
                         for item, label in enumerate(labels) if label is not None],
                        columns=["item", "rater", "label"])


def test_two_raters_cohen_kappa_and_alpha():
    one = ["yes", "yes", "no", "no", "yes", "no", "yes", None]
    two = ["yes", "no", "no", "no", "yes", "yes", "yes", "no"]
    result = rater_agreement(_long({"ann": one, "bob": two}))
    assert result["cohen_kappa"] == cohen_kappa_score(one[:7], two[:7])
    codes = {"no": 0, "yes": 1}
    reliability = np.array([[codes.get(v, np.nan) for v in labels] for labels in (one, two)], dtype=float)
    assert result["krippendorff_alpha"] == krippendorff.alpha(reliability_data=reliability,
                                                              level_of_measurement="nominal")
    assert result["fleiss_kappa"] == fleiss_kappa(
        aggregate_raters(np.array([[codes[a], codes[b]] for a, b in zip(one[:7], two[:7])]), n_cat=2)[0])
    assert result["cohen_kappa_pairs"] == [{"raters": ["ann", "bob"], "n_items": 7, "kappa": result["cohen_kappa"]}]
    assert (result["n_items"], result["n_raters"], result["n_ratings"], result["n_items_rated_by_all"]) == (
        8, 2, 15, 7)
    json.dumps(result, allow_nan=False)


def test_three_raters_fleiss_kappa_and_alpha():
    ratings = {"r1": [1, 2, 3, 1, 2, 2, 3, 1], "r2": [1, 2, 3, 2, 2, 1, 3, None],
               "r3": [1, 1, 3, 1, 2, 2, 3, 2]}
    result = rater_agreement(_long(ratings))
    complete = np.array([[ratings[r][i] for r in ratings] for i in range(7)])
    expected_fleiss = fleiss_kappa(aggregate_raters(complete)[0], method="fleiss")
    assert result["fleiss_kappa"] == expected_fleiss
    reliability = np.array([[np.nan if v is None else v for v in labels] for labels in ratings.values()],
                           dtype=float)
    assert result["krippendorff_alpha"] == krippendorff.alpha(reliability_data=reliability,
                                                              level_of_measurement="nominal")
    assert result["cohen_kappa"] is None and result["labels"] == [1, 2, 3]
    assert [pair["n_items"] for pair in result["cohen_kappa_pairs"]] == [7, 8, 7]
    assert result["cohen_kappa_pairs"][1]["kappa"] == cohen_kappa_score(
        [str(v) for v in ratings["r1"]], [str(v) for v in ratings["r3"]])


def test_fleiss_on_items_with_k_ratings_whoever_the_raters():
    """The demo's shape: 3 reviewers, 2 per case; no item is rated by all, yet Fleiss' kappa is defined."""
    pairs = [("r1", "r2"), ("r2", "r3"), ("r1", "r3")] * 4
    labels = [(1, 1), (0, 1), (0, 0), (1, 1), (1, 0), (1, 1), (0, 0), (1, 1), (0, 1), (1, 1), (0, 0), (1, 1)]
    long = pd.DataFrame([(item, rater, label) for item, (raters, values) in enumerate(zip(pairs, labels))
                         for rater, label in zip(raters, values)], columns=["item", "rater", "label"])
    result = rater_agreement(long, ratings_per_item=2)
    assert result["n_items_rated_by_all"] == 0 and result["n_items_fleiss"] == 12
    assert result["fleiss_kappa"] == fleiss_kappa(aggregate_raters(np.array(labels), n_cat=2)[0], method="fleiss")
    wide = long.pivot(index="item", columns="rater", values="label")
    assert result["krippendorff_alpha"] == krippendorff.alpha(
        reliability_data=wide.to_numpy(dtype=float).T, level_of_measurement="nominal")
    assert [p["n_items"] for p in result["cohen_kappa_pairs"]] == [4, 4, 4]


def test_agreement_with_one_label_is_undefined_not_nan():
    result = rater_agreement(_long({"a": ["yes"] * 4, "b": ["yes"] * 4, "c": ["yes"] * 4}))
    assert result["fleiss_kappa"] is None and result["krippendorff_alpha"] is None
    assert "Fleiss' kappa is undefined: every rating has the same label" in result["notes"]
    assert any(note.startswith("Krippendorff's alpha is undefined") for note in result["notes"])
    two = rater_agreement(_long({"a": ["yes"] * 3, "b": ["yes"] * 3}))
    assert two["cohen_kappa"] is None and two["notes"]
    json.dumps(two, allow_nan=False)
    json.dumps(result, allow_nan=False)


def test_agreement_input_errors():
    with pytest.raises(ValueError, match="lack column label"):
        rater_agreement(pd.DataFrame({"item": [1], "rater": ["a"]}))
    with pytest.raises(ValueError, match="no ratings"):
        rater_agreement(pd.DataFrame({"item": [1], "rater": ["a"], "label": [None]}))
    with pytest.raises(ValueError, match="rater 'a' labelled item '1' more than once"):
        rater_agreement(pd.DataFrame({"item": [1, 1], "rater": ["a", "a"], "label": ["x", "y"]}))
    single = rater_agreement(pd.DataFrame({"item": [1], "rater": ["a"], "label": ["x"]}))
    assert single["notes"] == ["agreement needs at least two raters"]
