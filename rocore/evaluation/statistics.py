"""Aggregate metrics, paired tests, confidence intervals and rater agreement for the study.

Each number is computed by the reference implementation named in its function (scikit-learn,
SciPy, statsmodels, krippendorff). This module fixes the settings the study reports, turns results
that are undefined for the data at hand into None with a note (never NaN, never a traceback), and
works on whole arrays, so that a dashboard can recompute everything for tens of thousands of cases
in well under a second.

Functions that can meet such data return a dict with a "notes" list of plain sentences.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import krippendorff
import numpy as np
import pandas as pd
from scipy.stats import wilcoxon
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_recall_fscore_support,
)
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "RESAMPLES",
    "SEED",
    "acceptability",
    "classification_metrics",
    "compare_means",
    "confusion",
    "mcnemar_exact",
    "paired_bootstrap",
    "rater_agreement",
    "wilcoxon_greater",
    "wilson_interval",
]

ALPHA = 0.05  # every interval is two-sided
CONFIDENCE = 1 - ALPHA
RESAMPLES = 2_000
SEED = 0

# A one-sided signed-rank test on k non-zero differences cannot give p < 0.05 for k < 5.
_MIN_DIFFERENCES = 5
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


def classification_metrics(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, and precision, recall and F1 over `labels`: macro, weighted and per class.

    sklearn.metrics.precision_recall_fscore_support(labels=labels, zero_division=0): a prediction
    outside `labels` counts against the recall of its gold class and against no class's precision.
    """
    if len(set(labels)) != len(labels):
        raise ValueError("labels must not repeat")
    gold_codes, predicted_codes = _encoded(labels, gold, predicted)
    label_codes = list(range(len(labels)))
    result = {"accuracy": float(accuracy_score(gold_codes, predicted_codes))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            gold_codes, predicted_codes, labels=label_codes, average=average, zero_division=0
        )
        result |= {f"precision_{average}": float(precision), f"recall_{average}": float(recall),
                   f"f1_{average}": float(f1)}
    precision, recall, f1, support = precision_recall_fscore_support(
        gold_codes, predicted_codes, labels=label_codes, average=None, zero_division=0
    )
    result["per_class"] = {
        str(label): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    }
    absent = [str(label) for label, s in zip(labels, support) if s == 0]
    result["notes"] = [(
        f"no gold case is {', '.join(absent)}: precision, recall and F1 of "
        f"{'that class are' if len(absent) == 1 else 'those classes are'} 0 (zero_division=0) "
        "and pull the macro averages down"
    )] if absent else []
    return result


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

    Cases where either score is NaN (undefined) are left out. Intervals: percentile bootstrap
    (paired_bootstrap) for every mean, and Wilson for each model when the scores are 0/1.
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
    """Exact McNemar test on paired 0/1 outcomes: statsmodels mcnemar(table, exact=True).

    Two-sided: a binomial test of the discordant cases (one model right, the other wrong).
    """
    base_flags = np.asarray(base, dtype=np.float64)
    finetuned_flags = np.asarray(finetuned, dtype=np.float64)
    if len(base_flags) == 0:
        raise ValueError("no cases to evaluate")
    if not (_is_binary(base_flags) and _is_binary(finetuned_flags)):
        raise ValueError("McNemar's test needs 0/1 outcomes")
    table = confusion_matrix(base_flags.astype(int), finetuned_flags.astype(int), labels=[1, 0])
    result = mcnemar(table, exact=True)
    return {
        "p": _float(result.pvalue),
        "table": {"both_right": int(table[0, 0]), "base_only_right": int(table[0, 1]),
                  "finetuned_only_right": int(table[1, 0]), "both_wrong": int(table[1, 1])},
    }


# --------------------------------------------------------------------------- acceptability


def acceptability(base: Mapping, finetuned: Mapping, *, resamples: int = RESAMPLES,
                  seed: int | Sequence[int] = SEED) -> dict:
    """Share of cases judged clinically acceptable per model, and whether fine-tuning raised it.

    `base` and `finetuned` map case id -> 1/0 (or True/False): one verdict per case and model,
    so several raters' verdicts must be reduced first (rater_agreement reports how far they
    agree). Only cases with a verdict for both models are compared; the others are counted.
    Per model: the share with Wilson and bootstrap intervals. Paired: one-sided Wilcoxon on the
    per-case 0/1 verdicts (fine-tuned > base), exact McNemar, and the difference in shares.
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
    result["paired"] = {
        "n_pairs": len(paired),
        "n_dropped": dropped,
        "wilcoxon_p_one_sided": test["p"],
        "mcnemar_exact_p": mcnemar_exact(finetuned_values, base_values)["p"],
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


def rater_agreement(ratings: pd.DataFrame) -> dict:
    """Agreement between raters on nominal labels, from a long table (item, rater, label).

    Cohen's kappa (sklearn cohen_kappa_score) when there are exactly two raters, Fleiss' kappa
    (statsmodels fleiss_kappa over aggregate_raters) when there are three or more, both over the
    items every rater labelled; Krippendorff's alpha (krippendorff.alpha, nominal) over all
    ratings, since it allows missing ones. A missing label (None/NaN) is a missing rating.
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
    labels = sorted(rated["label"].unique().tolist(), key=str)
    wide = rated.pivot(index="item", columns="rater", values="label")
    codes = wide.apply(lambda column: pd.Categorical(column, categories=labels).codes)
    codes = codes.where(wide.notna())
    complete = codes.dropna()
    n_raters = wide.shape[1]
    notes: list[str] = []
    result = {"n_items": len(wide), "n_raters": n_raters, "n_ratings": len(rated),
              "labels": labels, "n_items_rated_by_all": len(complete),
              "cohen_kappa": None, "fleiss_kappa": None, "krippendorff_alpha": None}
    if n_raters < 2:
        notes.append("agreement needs at least two raters")
        return result | {"notes": notes}
    if len(complete) == 0:
        notes.append("no item was labelled by every rater: no kappa")
    elif n_raters == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kappa = cohen_kappa_score(complete.iloc[:, 0], complete.iloc[:, 1])
        result["cohen_kappa"] = _undefined(kappa, "Cohen's kappa", notes)
    else:
        table, _ = aggregate_raters(complete.to_numpy(dtype=int), n_cat=len(labels))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kappa = fleiss_kappa(table, method="fleiss")
        result["fleiss_kappa"] = _undefined(kappa, "Fleiss' kappa", notes)
    try:
        alpha = krippendorff.alpha(reliability_data=codes.to_numpy(dtype=float).T,
                                   level_of_measurement="nominal")
        result["krippendorff_alpha"] = _undefined(alpha, "Krippendorff's alpha", notes)
    except ValueError as exc:
        notes.append(f"Krippendorff's alpha is undefined: {exc}")
    return result | {"notes": notes}
