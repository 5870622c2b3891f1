"""Aggregate metrics, paired tests, confidence intervals and rater agreement for the study.

Each number is computed by the reference implementation named in its function (scikit-learn,
SciPy, statsmodels, krippendorff). This module fixes the settings the study reports, turns results
that are undefined for the data at hand into None with a note (never NaN, never a traceback), and
works on whole arrays, so that a dashboard can recompute everything for tens of thousands of cases
in well under a second.

Functions that can meet such data return a dict with a "notes" list of plain sentences.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence

import krippendorff
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import binom, binomtest, wilcoxon
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "RESAMPLES",
    "SEED",
    "acceptability",
    "classification_metrics",
    "clustered_share",
    "compare_means",
    "confusion",
    "holm",
    "macro_f1_bootstrap",
    "mcnemar_exact",
    "newcombe_paired_interval",
    "paired_binary_power",
    "paired_bootstrap",
    "plan_paired_study",
    "rater_agreement",
    "resample_counts",
    "share_with_test",
    "wilcoxon_greater",
    "wilson_interval",
]

ALPHA = 0.05  # every interval is two-sided
CONFIDENCE = 1 - ALPHA
RESAMPLES = 2_000
SEED = 0

# A one-sided signed-rank test on k non-zero differences cannot give p < 0.05 for k < 5.
_MIN_DIFFERENCES = 5
# Exact power rises with n in a sawtooth: below the bisection's answer this many n are checked one by one.
_SAWTOOTH = 60
# Resamples drawn at once when resampling case indices: bounds memory to this many x n indices.
_RESAMPLE_CHUNK = 250


def _float(value) -> float | None:
    """A plain float for JSON, None where the value is undefined (NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def _interval(low, high) -> list[float | None]:
    return [_float(low), _float(high)]


def _is_binary(values: np.ndarray) -> bool:
    return bool(((values == 0) | (values == 1)).all())


# --------------------------------------------------------------------------- classification


def _encoded(labels: Sequence[str], *columns: Sequence[str]) -> list[np.ndarray]:
    """Integer codes of each column, the i-th label coded i, other values coded after them.

    scikit-learn sorts string labels on every call; on integer codes the same metrics are
    computed several times faster, with the same result.
    """
    parts = [pd.Series(list(labels), dtype=object), *(pd.Series(c, dtype=object) for c in columns)]
    codes, _ = pd.factorize(pd.concat(parts, ignore_index=True))
    return np.split(codes, np.cumsum([len(part) for part in parts])[:-1])[1:]


def classification_metrics(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str],
                           also_seen: Sequence[str] = ()) -> dict:
    """Accuracy, and precision, recall and F1: macro and weighted averages and per class.

    The averages are over the classes of `labels` present in the gold answers or the outputs of
    these cases (scikit-learn's default class set; `also_seen`: the other model's outputs, so that
    two models compared on the same cases average over the same classes), so that a view filtered
    to one class is not pulled down by classes it cannot contain; the absent classes are listed.
    Outputs that are no class of `labels` count against the recall of their gold class and against
    no precision. sklearn.metrics.precision_recall_fscore_support(labels=present, zero_division=0).
    """
    if len(set(labels)) != len(labels):
        raise ValueError("labels must not repeat")
    gold_codes, predicted_codes, other_codes = _encoded(labels, gold, predicted, also_seen)
    seen = set(np.unique(gold_codes)) | set(np.unique(predicted_codes)) | set(np.unique(other_codes))
    present = [code for code in range(len(labels)) if code in seen]
    absent = [str(label) for code, label in enumerate(labels) if code not in seen]
    result = {"accuracy": float(accuracy_score(gold_codes, predicted_codes))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            gold_codes, predicted_codes, labels=present or [0], average=average, zero_division=0
        )
        result |= {f"precision_{average}": float(precision), f"recall_{average}": float(recall),
                   f"f1_{average}": float(f1)}
    precision, recall, f1, support = precision_recall_fscore_support(
        gold_codes, predicted_codes, labels=list(range(len(labels))), average=None, zero_division=0
    )
    result["per_class"] = {
        str(label): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    }
    result["classes_averaged"] = [str(labels[code]) for code in present]
    result["absent_classes"] = absent
    result["notes"] = [(
        f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} in neither the gold answers nor "
        "the outputs of these cases: left out of the macro averages"
    )] if absent else []
    return result


def macro_f1_bootstrap(gold: Sequence[str], base: Sequence[str], finetuned: Sequence[str],
                       labels: Sequence[str], *, resamples: int = RESAMPLES,
                       seed: int | Sequence[int] = SEED) -> dict:
    """Percentile bootstrap intervals of each model's macro-F1 and of their difference.

    Macro-F1 has no closed-form interval. Cases are resampled with replacement, the same cases for
    both models; each resample's F1 is computed from its confusion counts over the classes
    averaged on the full data (those of classification_metrics), which the tests check against
    sklearn on resampled cases.
    """
    gold_codes, *model_codes = _encoded(labels, gold, base, finetuned)
    n, k = len(gold_codes), len(labels)
    if n == 0:
        raise ValueError("no cases to evaluate")
    seen = set(np.unique(gold_codes)).union(*(np.unique(c) for c in model_codes))
    present = np.array([code for code in range(k) if code in seen] or [0])
    rng = np.random.default_rng(seed)
    column = np.full(1 + max(int(c.max()) for c in (gold_codes, *model_codes)), -1)
    column[present] = np.arange(len(present))

    def onehot(codes: np.ndarray, keep: np.ndarray) -> sparse.csr_matrix:
        """Cases x averaged classes, 1 where the case's code is that class (sparse: one entry a row)."""
        rows = np.flatnonzero(keep & (column[codes] >= 0))
        return sparse.csr_matrix((np.ones(len(rows)), (rows, column[codes[rows]])), shape=(n, len(present)))

    everywhere = np.ones(n, dtype=bool)
    gold_onehot = onehot(gold_codes, everywhere)
    onehots = [(onehot(codes, everywhere), onehot(gold_codes, codes == gold_codes)) for codes in model_codes]
    stacked = np.empty((resamples, 3))
    for start in range(0, resamples, _RESAMPLE_CHUNK):
        size = min(_RESAMPLE_CHUNK, resamples - start)
        weights = np.ascontiguousarray(resample_counts(rng, n, size).T, dtype=np.float64)  # cases x resamples
        gold_counts = gold_onehot.T @ weights  # classes x resamples
        for j, (pred_onehot, right_onehot) in enumerate(onehots):
            tp = right_onehot.T @ weights
            denominator = gold_counts + pred_onehot.T @ weights
            f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
            stacked[start:start + size, j] = f1.mean(axis=0)
    stacked[:, 2] = stacked[:, 1] - stacked[:, 0]
    low, high = np.percentile(stacked, [50 * ALPHA, 100 - 50 * ALPHA], axis=0)
    return {name: _interval(low[i], high[i]) for i, name in enumerate(("base", "finetuned", "difference"))}


def confusion(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict:
    """sklearn.metrics.confusion_matrix over `labels`: rows are gold labels, columns predictions."""
    gold_codes, predicted_codes = _encoded(labels, gold, predicted)
    matrix = confusion_matrix(gold_codes, predicted_codes, labels=list(range(len(labels))))
    return {"labels": [str(label) for label in labels], "matrix": matrix.tolist()}


# --------------------------------------------------------------------------- intervals


def wilson_interval(successes: int, n: int) -> list[float] | None:
    """statsmodels proportion_confint(alpha=ALPHA, method="wilson"); None when n is 0."""
    if n == 0:
        return None
    low, high = proportion_confint(int(successes), int(n), alpha=ALPHA, method="wilson")
    return _interval(low, high)


def resample_counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """How often each of n cases is drawn in each of `size` resamples with replacement (size x n).

    n case indices drawn uniformly per resample and counted; several times faster than
    rng.multinomial over n equally likely cases, with the same distribution.
    """
    drawn = rng.integers(0, n, size=(size, n)) + np.arange(size)[:, None] * n
    return np.bincount(drawn.reshape(-1), minlength=size * n).reshape(size, n)


def newcombe_paired_interval(both: int, first_only: int, second_only: int, neither: int) -> list[float] | None:
    """95% interval of p1 - p2 for two proportions measured on the same cases: Newcombe's method 10.

    Newcombe RG, Stat Med 1998;17:2635-50: the Wilson intervals of the two marginal proportions
    combined with the phi correlation of the paired table (its numerator shrunk by n/2 when
    positive). statsmodels 0.15 has no paired-difference interval, so it is written out here and
    tested against a published worked example. None when there are no cases.
    """
    n = both + first_only + second_only + neither
    if n == 0:
        return None
    p1, p2 = (both + first_only) / n, (both + second_only) / n
    (l1, u1), (l2, u2) = wilson_interval(both + first_only, n), wilson_interval(both + second_only, n)
    margins = (both + first_only) * (second_only + neither) * (both + second_only) * (first_only + neither)
    cross = both * neither - first_only * second_only
    shrunk = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = shrunk / math.sqrt(margins) if margins > 0 else 0.0
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    return [max(-1.0, p1 - p2 - below), min(1.0, p1 - p2 + above)]


def share_with_test(successes: int, n: int, null: float = 0.5) -> dict:
    """A proportion with its Wilson interval and an exact two-sided binomial test against `null`."""
    return {"n": int(n), "k": int(successes), "share": successes / n if n else None,
            "ci95_wilson": wilson_interval(successes, n),
            "binomial_p_two_sided": _float(binomtest(int(successes), int(n), null).pvalue) if n else None}


def clustered_share(successes: Sequence[int], totals: Sequence[int], *, resamples: int = RESAMPLES,
                    seed: int | Sequence[int] = SEED) -> dict:
    """The share of all ratings that are successes, with a case-clustered percentile bootstrap interval.

    Ratings of one case are not independent, so whole cases (with all their ratings) are
    resampled with replacement; each resample's share is its successes over its ratings.
    """
    k = np.asarray(successes, dtype=np.float64)
    m = np.asarray(totals, dtype=np.float64)
    if len(m) == 0 or m.sum() == 0:
        return {"n_cases": len(m), "n_ratings": 0, "share": None, "ci95_cluster_bootstrap": None}
    rng = np.random.default_rng(seed)
    shares = np.empty(resamples)
    for start in range(0, resamples, _RESAMPLE_CHUNK):
        size = min(_RESAMPLE_CHUNK, resamples - start)
        weights = resample_counts(rng, len(m), size)
        shares[start:start + size] = (weights @ k) / (weights @ m)
    low, high = np.percentile(shares, [50 * ALPHA, 100 - 50 * ALPHA])
    return {"n_cases": len(m), "n_ratings": int(m.sum()), "share": float(k.sum() / m.sum()),
            "ci95_cluster_bootstrap": _interval(low, high)}


def holm(pvalues: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm-adjusted p-values across one family: statsmodels multipletests(method="holm")."""
    named = {name: p for name, p in pvalues.items() if p is not None}
    adjusted = dict.fromkeys(pvalues)
    if named:
        values = multipletests(list(named.values()), alpha=ALPHA, method="holm")[1]
        adjusted |= {name: float(value) for name, value in zip(named, values)}
    return adjusted


_OUTCOME_PAIRS = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Column means of paired scores (cases x 2) over resamples of the cases, with replacement.

    For 0/1 scores, the number of cases of each of the four (base, fine-tuned) outcomes in a
    resample of n cases is multinomial with the observed shares: drawing those four counts gives
    the same bootstrap distribution as drawing n case indices, in a fraction of the time.
    """
    n = len(values)
    if _is_binary(values):
        counts = np.bincount((2 * values[:, 0] + values[:, 1]).astype(np.intp), minlength=4)
        return rng.multinomial(n, counts / n, size=resamples) @ _OUTCOME_PAIRS / n
    columns = np.ascontiguousarray(values.T)
    means = np.empty((resamples, len(columns)))
    for start in range(0, resamples, _RESAMPLE_CHUNK):
        size = min(_RESAMPLE_CHUNK, resamples - start)
        rows = rng.integers(0, n, size=(size, n), dtype=np.min_scalar_type(n))
        for j, column in enumerate(columns):
            means[start:start + size, j] = column[rows].mean(axis=1)
    return means


def paired_bootstrap(base: Sequence[float], finetuned: Sequence[float], *, resamples: int = RESAMPLES,
                     seed: int | Sequence[int] = SEED) -> dict:
    """Percentile bootstrap intervals of each model's mean score and of the mean difference.

    Cases are resampled with replacement, the same cases for both models, so the interval of the
    difference reflects the pairing. scipy.stats.bootstrap(paired=True, method="percentile")
    computes the same interval but draws case indices for every statistic separately, which is
    seconds instead of milliseconds for 10,000 cases; the tests check the two agree.
    """
    values = np.column_stack([np.asarray(base, dtype=np.float64), np.asarray(finetuned, dtype=np.float64)])
    if len(values) == 0:
        raise ValueError("no cases to evaluate")
    means = _resampled_means(values, resamples, np.random.default_rng(seed))
    low, high = np.percentile(
        np.column_stack([means, means[:, 1] - means[:, 0]]), [50 * ALPHA, 100 - 50 * ALPHA], axis=0
    )
    return {name: _interval(low[i], high[i]) for i, name in enumerate(("base", "finetuned", "difference"))}


def compare_means(base: Sequence[float], finetuned: Sequence[float], *, resamples: int = RESAMPLES,
                  seed: int | Sequence[int] = SEED) -> dict:
    """Each model's mean per-case score and the paired mean difference, with 95% intervals.

    Cases where either score is NaN (undefined) are left out. Intervals: when the scores are 0/1,
    Wilson for each model and Newcombe's paired interval for the difference (the ones reported);
    percentile bootstrap (paired_bootstrap) for every mean, the reported one for continuous scores.
    """
    values = np.column_stack([np.asarray(base, dtype=np.float64), np.asarray(finetuned, dtype=np.float64)])
    values = values[~np.isnan(values).any(axis=1)]
    n = len(values)
    if n == 0:
        return {"n": 0, "base": None, "finetuned": None, "difference": None}
    intervals = paired_bootstrap(values[:, 0], values[:, 1], resamples=resamples, seed=seed)
    binary = _is_binary(values)
    result: dict = {"n": n}
    for j, model in enumerate(("base", "finetuned")):
        ci95 = {"bootstrap": intervals[model]}
        if binary:
            ci95["wilson"] = wilson_interval(int(values[:, j].sum()), n)
        result[model] = {"mean": float(values[:, j].mean()), "ci95": ci95}
    result["difference"] = {
        "mean": float(values[:, 1].mean() - values[:, 0].mean()),
        "ci95": {"bootstrap": intervals["difference"]},
    }
    if binary:
        cells = np.bincount((2 * values[:, 1] + values[:, 0]).astype(np.intp), minlength=4)
        result["difference"]["ci95"]["newcombe"] = newcombe_paired_interval(
            int(cells[3]), int(cells[2]), int(cells[1]), int(cells[0]))
    return result


# --------------------------------------------------------------------------- paired tests


def wilcoxon_greater(finetuned: Sequence[float], base: Sequence[float]) -> dict:
    """One-sided Wilcoxon signed-rank test that fine-tuned scores exceed base scores, case by case.

    scipy.stats.wilcoxon(finetuned, base, alternative="greater", zero_method="wilcox"): cases
    with equal scores are dropped before ranking. With no differing case there is nothing to rank:
    p is reported as 1.0 with a note.
    """
    differences = np.asarray(finetuned, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    if len(differences) == 0:
        raise ValueError("no cases to evaluate")
    nonzero = int(np.count_nonzero(differences))
    if nonzero == 0:
        return {"statistic": None, "p": 1.0, "n_nonzero": 0,
                "notes": ["all paired differences are zero: Wilcoxon p = 1.0"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = wilcoxon(finetuned, base, alternative="greater", zero_method="wilcox")
    notes = [f"Wilcoxon: {w.message}" for w in caught]
    if nonzero < _MIN_DIFFERENCES:
        notes.append(
            f"only {nonzero} paired difference{'s are' if nonzero > 1 else ' is'} non-zero: too few "
            f"for the one-sided Wilcoxon test to reach p < 0.05 (it needs {_MIN_DIFFERENCES})"
        )
    p = _float(result.pvalue)
    if p is None:
        notes.append("Wilcoxon p-value is undefined for these differences")
    return {"statistic": _float(result.statistic), "p": p, "n_nonzero": nonzero, "notes": notes}


def mcnemar_exact(finetuned: Sequence[float], base: Sequence[float]) -> dict:
    """Exact McNemar test on paired 0/1 outcomes, two-sided and one-sided (fine-tuned > base).

    The exact McNemar test is the exact sign test on the discordant cases: two-sided, statsmodels
    mcnemar(table, exact=True); one-sided, scipy.stats.binomtest(finetuned_only,
    finetuned_only + base_only, alternative="greater"). Both are 1.0 when no case is discordant.
    """
    base_flags = np.asarray(base, dtype=np.float64)
    finetuned_flags = np.asarray(finetuned, dtype=np.float64)
    if len(base_flags) == 0:
        raise ValueError("no cases to evaluate")
    if not (_is_binary(base_flags) and _is_binary(finetuned_flags)):
        raise ValueError("McNemar's test needs 0/1 outcomes")
    table = confusion_matrix(base_flags.astype(int), finetuned_flags.astype(int), labels=[1, 0])
    finetuned_only, base_only = int(table[1, 0]), int(table[0, 1])
    discordant = finetuned_only + base_only
    one_sided = binomtest(finetuned_only, discordant, alternative="greater").pvalue if discordant else 1.0
    return {
        "p": _float(mcnemar(table, exact=True).pvalue),
        "p_one_sided": _float(one_sided),
        "n_discordant": discordant,
        "table": {"both_right": int(table[0, 0]), "base_only_right": base_only,
                  "finetuned_only_right": finetuned_only, "both_wrong": int(table[1, 1])},
        "difference_ci95_newcombe": newcombe_paired_interval(
            int(table[0, 0]), finetuned_only, base_only, int(table[1, 1])),
    }


# --------------------------------------------------------------------------- acceptability


def acceptability(base: Mapping, finetuned: Mapping, *, resamples: int = RESAMPLES,
                  seed: int | Sequence[int] = SEED) -> dict:
    """Share of cases judged clinically acceptable per model, and whether fine-tuning raised it.

    `base` and `finetuned` map case id -> 1/0 (or True/False): one verdict per case and model,
    so several raters' verdicts must be reduced first (rater_agreement reports how far they
    agree). Only cases with a verdict for both models are compared; the others are counted.
    Per model: the share with Wilson (and bootstrap) intervals. Paired: the exact sign test on the
    discordant cases, one-sided (fine-tuned > base), the exact McNemar test, two-sided, the
    difference in shares with Newcombe's paired interval; and the paper's one-sided Wilcoxon.
    """
    base_series = pd.Series(base, dtype=object).dropna()
    finetuned_series = pd.Series(finetuned, dtype=object).dropna()
    paired = base_series.index.intersection(finetuned_series.index, sort=False)
    if len(paired) == 0:
        raise ValueError("no cases to evaluate: no case has a verdict for both models")
    base_values = base_series[paired].astype(np.float64).to_numpy()
    finetuned_values = finetuned_series[paired].astype(np.float64).to_numpy()
    if not (_is_binary(base_values) and _is_binary(finetuned_values)):
        raise ValueError("acceptability verdicts must be 1/0 (acceptable or not)")
    dropped = {"no_base_verdict": len(finetuned_series) - len(paired),
               "no_finetuned_verdict": len(base_series) - len(paired)}
    notes = [
        f"{count} case(s) without a verdict on the {model} output left out"
        for model, count in zip(("base", "fine-tuned"), dropped.values()) if count
    ]
    means = compare_means(base_values, finetuned_values, resamples=resamples, seed=seed)
    test = wilcoxon_greater(finetuned_values, base_values)
    notes += test["notes"]
    result = {}
    for model, values in (("base", base_values), ("finetuned", finetuned_values)):
        result[model] = {"n": len(paired), "acceptable": int(values.sum()),
                         "share": means[model]["mean"], "ci95": means[model]["ci95"]}
    exact = mcnemar_exact(finetuned_values, base_values)
    means["difference"]["ci95"]["newcombe"] = exact["difference_ci95_newcombe"]
    result["paired"] = {
        "n_pairs": len(paired),
        "n_dropped": dropped,
        "wilcoxon_p_one_sided": test["p"],
        "sign_test_p_one_sided": exact["p_one_sided"],
        "mcnemar_exact_p": exact["p"],
        "mcnemar_table": exact["table"],
        "difference": {"share": means["difference"]},
    }
    result["notes"] = notes
    return result


# --------------------------------------------------------------------------- agreement


def _undefined(value, what: str, notes: list[str]) -> float | None:
    number = _float(value)
    if number is None:
        notes.append(f"{what} is undefined: every rating has the same label")
    return number


def _cohen_pairs(codes: pd.DataFrame, notes: list[str], n_labels: int, weights: str | None) -> list[dict]:
    """Cohen's kappa (sklearn cohen_kappa_score, with `weights` for ordinal labels) for every pair of raters
    over the items both labelled; `codes` are the labels' ranks, so weights see their order."""
    pairs = []
    for first, second in itertools.combinations(codes.columns, 2):
        both = codes[[first, second]].dropna()
        kappa = None
        if len(both):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kappa = _float(cohen_kappa_score(both[first].astype(int), both[second].astype(int),
                                                 labels=list(range(n_labels)), weights=weights))
            if kappa is None:
                notes.append(f"Cohen's kappa of {first} and {second} is undefined: one label only")
        pairs.append({"raters": [str(first), str(second)], "n_items": len(both), "kappa": kappa})
    return pairs


ORDINAL_KAPPA_WEIGHTS = "quadratic"


def rater_agreement(ratings: pd.DataFrame, ratings_per_item: int | None = None, *,
                    levels: Sequence | None = None) -> dict:
    """Agreement between raters on nominal labels, from a long table (item, rater, label); given a scale's
    ordered `levels` (every level, also those no one chose, so that distances are the scale's), on
    ordinal labels: Krippendorff's alpha at the ordinal level and Cohen's kappa weighted
    (ORDINAL_KAPPA_WEIGHTS), so that near misses count as partial agreement; Fleiss' kappa stays
    nominal, as it is defined.

    Fits a design in which each item is rated by k of several raters: Fleiss' kappa (statsmodels
    fleiss_kappa over aggregate_raters) on the items with exactly k ratings, whoever gave them
    (k: `ratings_per_item`, else the most common number of ratings per item); Krippendorff's alpha
    (krippendorff.alpha, nominal) over all ratings, since it allows missing ones; Cohen's kappa
    (sklearn) for every pair of raters over the items they share ("cohen_kappa": the one pair's,
    when there are exactly two raters). A missing label (None/NaN) is a missing rating.
    """
    missing = [c for c in ("item", "rater", "label") if c not in ratings.columns]
    if missing:
        raise ValueError(f"ratings lack column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    rated = ratings.loc[ratings["label"].notna(), ["item", "rater", "label"]]
    if rated.empty:
        raise ValueError("no ratings to compare")
    repeated = rated[rated.duplicated(["item", "rater"])]
    if not repeated.empty:
        item, rater = repeated.iloc[0][["item", "rater"]]
        raise ValueError(
            f"rater '{rater}' labelled item '{item}' more than once ({len(repeated)} repeated "
            "ratings in all); keep one rating per item and rater"
        )
    ordinal = levels is not None
    labels = list(levels) if ordinal else sorted(rated["label"].unique().tolist(), key=str)
    unknown = set(rated["label"]) - set(labels)
    if unknown:
        raise ValueError(f"labels {sorted(unknown, key=str)} are not levels of the scale {labels}")
    wide = rated.pivot(index="item", columns="rater", values="label")
    codes = wide.apply(lambda column: pd.Categorical(column, categories=labels).codes)
    codes = codes.where(wide.notna())
    counts = wide.notna().sum(axis=1)
    k = int(ratings_per_item or counts.value_counts().sort_index(ascending=False).idxmax())
    exactly_k = codes[counts == k]
    n_raters = wide.shape[1]
    notes: list[str] = []
    result = {"n_items": len(wide), "n_raters": n_raters, "n_ratings": len(rated), "labels": labels,
              "n_items_rated_by_all": int((counts == n_raters).sum()), "ratings_per_item": k,
              "n_items_fleiss": len(exactly_k), "n_items_krippendorff": int((counts >= 2).sum()),
              "cohen_kappa": None, "cohen_kappa_pairs": [], "fleiss_kappa": None, "krippendorff_alpha": None,
              "level": "ordinal" if ordinal else "nominal",
              "cohen_kappa_weights": ORDINAL_KAPPA_WEIGHTS if ordinal else None}
    if n_raters < 2:
        notes.append("agreement needs at least two raters")
        return result | {"notes": notes}
    result["cohen_kappa_pairs"] = _cohen_pairs(codes, notes, len(labels), ORDINAL_KAPPA_WEIGHTS if ordinal else None)
    if n_raters == 2:
        result["cohen_kappa"] = result["cohen_kappa_pairs"][0]["kappa"]
    if k < 2 or exactly_k.empty:
        notes.append(f"no item has {k} ratings (k >= 2 needed): no Fleiss' kappa")
    else:
        rows = np.sort(exactly_k.to_numpy(dtype=float), axis=1)[:, :k].astype(int)
        table, _ = aggregate_raters(rows, n_cat=len(labels))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kappa = fleiss_kappa(table, method="fleiss")
        result["fleiss_kappa"] = _undefined(kappa, "Fleiss' kappa", notes)
    try:
        alpha = krippendorff.alpha(reliability_data=codes.to_numpy(dtype=float).T,
                                   level_of_measurement=result["level"],
                                   value_domain=list(range(len(labels))) if ordinal else None)
        result["krippendorff_alpha"] = _undefined(alpha, "Krippendorff's alpha", notes)
    except ValueError as exc:
        notes.append(f"Krippendorff's alpha is undefined: {exc}")
    return result | {"notes": notes}


# --------------------------------------------------------------------------- study planning


def _reject_given_discordant(max_discordant: int, alpha: float) -> np.ndarray:
    """Per number d of discordant cases, the largest count c whose two-sided exact sign test rejects
    (x <= c or x >= d - c, under Binomial(d, 1/2)); -1 where no count rejects."""
    d = np.arange(max_discordant + 1)
    c = binom.ppf(alpha / 2, d, 0.5)
    c = np.where(binom.cdf(c, d, 0.5) <= alpha / 2, c, c - 1)
    return c.astype(int)


def paired_binary_power(n: int, p_base: float, p_finetuned: float, discordant: float | None = None,
                        alpha: float = ALPHA, *, _critical: np.ndarray | None = None) -> float:
    """Exact power of the two-sided exact McNemar test for n paired cases.

    The discordant count D is Binomial(n, discordant); given D = d, the cases only the fine-tuned
    model gets right are Binomial(d, q) with q = p10 / (p10 + p01). Power sums P(D = d) times
    the probability of landing in the test's rejection region, computed exactly (scipy.stats.binom).
    Without `discordant`, the two models' outcomes on a case are taken as independent
    (p10 = pf (1 - pb), p01 = pb (1 - pf)), which gives the most discordant cases and so the
    largest, safest n for correlated outputs.
    """
    p10, p01 = _discordant_cells(p_base, p_finetuned, discordant)
    critical = _critical if _critical is not None else _reject_given_discordant(n, alpha)
    d = np.arange(n + 1)
    q = p10 / (p10 + p01)
    c = critical[: n + 1]
    reject = np.where(c >= 0, binom.cdf(c, d, q) + binom.sf(d - c - 1, d, q), 0.0)
    return float(np.sum(binom.pmf(d, n, p10 + p01) * reject))


def _discordant_cells(p_base: float, p_finetuned: float, discordant: float | None) -> tuple[float, float]:
    for name, value in (("base", p_base), ("fine-tuned", p_finetuned)):
        if not 0 <= value <= 1:
            raise ValueError(f"the {name} proportion must be between 0 and 1")
    if p_base == p_finetuned:
        raise ValueError("the two proportions must differ: there is no difference to detect")
    difference = p_finetuned - p_base
    if discordant is None:
        discordant = p_finetuned * (1 - p_base) + p_base * (1 - p_finetuned)
    if not abs(difference) <= discordant <= min(1.0, p_base + p_finetuned, 2 - p_base - p_finetuned):
        raise ValueError(f"the discordant share must be at least the difference ({abs(difference):.3f}) and "
                         "fit both proportions")
    return (discordant + difference) / 2, (discordant - difference) / 2


def plan_paired_study(p_base: float, p_finetuned: float, *, discordant: float | None = None,
                      alpha: float = ALPHA, power: float = 0.8, ratings_per_case: int = 1,
                      max_cases: int = 20_000) -> dict:
    """Cases needed to detect p_finetuned vs p_base on the same cases with the exact McNemar test.

    The smallest n whose exact power (paired_binary_power) reaches `power` at two-sided `alpha`,
    and the ratings that makes with `ratings_per_case` reviewers per case.
    """
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError("alpha and power must be between 0 and 1")
    if ratings_per_case < 1:
        raise ValueError("ratings per case must be at least 1")
    p10, p01 = _discordant_cells(p_base, p_finetuned, discordant)
    critical = _reject_given_discordant(max_cases, alpha)
    def enough(n: int) -> bool:
        return paired_binary_power(n, p_base, p_finetuned, p10 + p01, alpha, _critical=critical) >= power

    found = None
    if enough(max_cases):
        low, high = 1, max_cases  # bisection on the rising trend, then case by case below it
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if enough(middle) else (middle, high)
        found = high
        for n in range(high - 1, max(1, high - _SAWTOOTH), -1):
            if enough(n):
                found = n
    notes = []
    if ratings_per_case % 2 == 0:
        notes.append(f"{ratings_per_case} reviewers per case can tie (a tie counts as not acceptable): an odd "
                     "number avoids ties")
    if found is None:
        notes.append(f"more than {max_cases} cases would be needed")
    return {"p_base": p_base, "p_finetuned": p_finetuned, "discordant": p10 + p01,
            "discordant_assumed_independent": discordant is None, "alpha": alpha, "power": power,
            "test": "exact McNemar, two-sided", "cases": found,
            "achieved_power": None if found is None else paired_binary_power(
                found, p_base, p_finetuned, p10 + p01, alpha, _critical=critical),
            "ratings_per_case": ratings_per_case,
            "ratings": None if found is None else found * ratings_per_case,
            "method": ("exact power of the two-sided exact McNemar test: the discordant count is binomial "
                       "(n, p10 + p01) and, given it, the cases only the fine-tuned model gets right are "
                       "binomial with q = p10 / (p10 + p01) (scipy.stats.binom); n: the smallest whose power "
                       "reaches the target, found by bisection and then n by n over the 60 below it"),
            "notes": notes}
