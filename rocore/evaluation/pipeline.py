"""The one evaluation pipeline: paired outputs -> per-case scores -> the study's figures, as JSON.

Two steps, so that the slow one can be stored. score_outputs scores every output once
(rocore.evaluation.scoring); evaluate_scores pairs those scores by case and computes every figure of
the report (rocore.evaluation.statistics). evaluate_outputs runs both on a table of paired outputs
(rocore.evaluation.outputs); the dashboard keeps the scores and calls evaluate_scores alone, and the
report and the CLI only render what it returns.
"""

from __future__ import annotations

import functools
import importlib.metadata
import zlib

import pandas as pd

from rocore.data.labels import MODALITIES
from rocore.evaluation.outputs import MODELS, EvaluationInputError, output_problems, tidy_outputs
from rocore.evaluation.scoring import LABEL_COLUMNS, OTHER, SCORE_COLUMNS, TASKS, score_rows
from rocore.evaluation.statistics import (
    ALPHA,
    CONFIDENCE,
    RESAMPLES,
    SEED,
    classification_metrics,
    compare_means,
    confusion,
    holm,
    macro_f1_bootstrap,
    mcnemar_exact,
    wilcoxon_greater,
)

MODEL_NAMES = {"base": "base", "finetuned": "fine-tuned"}

# Per-case score column -> the name of its mean in the report.
METRIC_NAMES = {
    "correct": "accuracy",
    "category_match": "accuracy_category",
    "valid": "valid_rate",
    "billable": "billable_rate",
    "laterality_error": "laterality_error_rate",
    "rouge1_f": "rouge1_f",
    "total_dose_match": "total_dose_match",
    "fractions_match": "fractions_match",
    "schedule_match": "schedule_match",
}

# The per-case score that the signed-rank test compares.
TESTED_SCORE = {"regimen": "rouge1_f", "modality": "correct", "icd10": "correct"}

# 0/1 scores where higher is better: each gets the exact sign test and exact McNemar test.
EXACT_TESTED = ("correct", "category_match", "total_dose_match", "fractions_match", "schedule_match")

# The declared primary endpoint per task unless a study or report names another; regimen
# acceptability replaces ROUGE-1 for Task 1 when the runs have ratings.
DEFAULT_PRIMARY = {"regimen": "rouge1_f", "modality": "accuracy", "icd10": "accuracy"}
ACCEPTABILITY = "acceptability"

# Dropped case ids named in a note, at most.
_NAMED = 10


# --------------------------------------------------------------------------- scoring


def score_outputs(outputs: pd.DataFrame) -> pd.DataFrame:
    """Per-case scores of every output: one row per (case, task, model), the part worth storing.

    Columns: case_id, task, model, gold, output, then the label and score columns of
    rocore.evaluation.scoring (NaN where a column does not belong to the row's task). Missing outputs
    get no row. The outputs are not checked here (evaluate_outputs and read_outputs_file do): a gold
    answer that is no label raises LabelError.
    """
    rows = tidy_outputs(outputs).melt(id_vars=["case_id", "task", "gold"], value_vars=list(MODELS),
                                      var_name="model", value_name="output").dropna(subset=["output"])
    return score_rows(rows[["case_id", "task", "model", "gold", "output"]]).reset_index(drop=True)


# --------------------------------------------------------------------------- statistics


def _pair(rows: pd.DataFrame, task: str) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """The two models' scores of the cases both answered, in the same order, and the counts left out."""
    frames = {model: rows[rows["model"] == model].set_index("case_id") for model in MODELS}
    for model, frame in frames.items():
        if frame.index.has_duplicates:
            case_id = frame.index[frame.index.duplicated()][0]
            raise ValueError(f"{task}: case '{case_id}' is scored more than once for the {model} model")
    paired = frames["base"].index.intersection(frames["finetuned"].index, sort=False)
    base, finetuned = frames["base"].loc[paired], frames["finetuned"].loc[paired]
    if LABEL_COLUMNS[task] and not base["gold_label"].equals(finetuned["gold_label"]):
        raise ValueError(f"{task}: the two models' scores were made against different gold answers")
    dropped = {"no_base_output": frames["finetuned"].index.difference(paired, sort=False).tolist(),
               "no_finetuned_output": frames["base"].index.difference(paired, sort=False).tolist()}
    return base, finetuned, dropped


def _seed(seed: int, task: str, metric: str) -> list[int]:
    """A seed per task and metric, so that an interval does not depend on what else is evaluated."""
    return [seed, zlib.crc32(f"{task}/{metric}".encode())]


def _labels(task: str, frames: dict[str, pd.DataFrame]) -> list[str]:
    """The classes: the four modalities, or every ICD-10-CM code given as gold answer or output."""
    if task == "modality":
        return list(MODALITIES)
    codes = set(frames["base"]["gold_label"])
    for frame in frames.values():
        codes |= set(frame["predicted_label"]) - {OTHER}
    return sorted(codes)


def _label_metrics(task: str, frames: dict[str, pd.DataFrame], resamples: int,
                   seed: int) -> tuple[dict[str, dict], dict, list[str]]:
    """Accuracy, precision, recall and F1 per model; per class and confusion matrix for modality;
    the bootstrap interval of macro-F1 and of its difference."""
    labels = _labels(task, frames)
    intervals = macro_f1_bootstrap(frames["base"]["gold_label"], frames["base"]["predicted_label"],
                                   frames["finetuned"]["predicted_label"], labels, resamples=resamples,
                                   seed=_seed(seed, task, "f1_macro"))
    figures, notes = {}, []
    for model, frame in frames.items():
        other = frames["finetuned" if model == "base" else "base"]
        metrics = classification_metrics(frame["gold_label"], frame["predicted_label"], labels,
                                         other["predicted_label"])
        notes += [note for note in metrics.pop("notes") if note not in notes]
        if task == "modality":
            metrics["confusion_matrix"] = confusion(frame["gold_label"], frame["predicted_label"],
                                                    [*labels, OTHER])
        else:
            del metrics["per_class"]
            metrics |= {"n_labels": len(labels), "laterality_errors": int(frame["laterality_error"].sum())}
        figures[model] = metrics
    return figures, intervals, notes


def _mean_metrics(task: str, frames: dict[str, pd.DataFrame], resamples: int,
                  seed: int) -> tuple[dict[str, dict], dict, list[str]]:
    """Per model: the mean of each score and its intervals (under "ci95"); the paired differences."""
    n = len(frames["base"])
    means: dict[str, dict] = {model: {} for model in MODELS}
    intervals: dict[str, dict] = {model: {} for model in MODELS}
    difference, notes = {}, []
    for column in SCORE_COLUMNS[task]:
        metric = METRIC_NAMES[column]
        compared = compare_means(frames["base"][column], frames["finetuned"][column],
                                 resamples=resamples, seed=_seed(seed, task, metric))
        if compared["n"] == 0:
            notes.append(f"{metric}: no case has a score (no gold regimen states a dose)")
        elif compared["n"] < n:
            notes.append(f"{metric}: {n - compared['n']} of {n} cases have no score (the gold regimen "
                         "states no dose) and are left out")
        for model in MODELS:
            summary = compared[model]
            means[model][metric] = None if summary is None else summary["mean"]
            if summary is not None:
                intervals[model][metric] = summary["ci95"]
        difference[metric] = compared["difference"]
    if task == "regimen":
        for model in MODELS:
            means[model]["n_dose_scored"] = int(frames["base"]["total_dose_match"].notna().sum())
    figures = {model: {**means[model], "ci95": intervals[model]} for model in MODELS}
    return figures, difference, notes


def _exact_tests(task: str, frames: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Per 0/1 score of the task: exact sign test one-sided and exact McNemar two-sided."""
    tests = {}
    for column in (c for c in EXACT_TESTED if c in SCORE_COLUMNS[task]):
        both = pd.DataFrame({"base": frames["base"][column].to_numpy(),
                             "finetuned": frames["finetuned"][column].to_numpy()}).dropna()
        if len(both):
            exact = mcnemar_exact(both["finetuned"], both["base"])
            tests[METRIC_NAMES[column]] = {
                "n_pairs": len(both), "n_discordant": exact["n_discordant"], "table": exact["table"],
                "sign_test_p_one_sided": exact["p_one_sided"], "mcnemar_exact_p_two_sided": exact["p"]}
    return tests


def _tests(task: str, frames: dict[str, pd.DataFrame]) -> tuple[dict, list[str]]:
    """The exact tests of every 0/1 score; the paper's one-sided Wilcoxon on the task's tested score."""
    tested = TESTED_SCORE[task]
    base, finetuned = frames["base"][tested].to_numpy(), frames["finetuned"][tested].to_numpy()
    test = wilcoxon_greater(finetuned, base)
    exact = _exact_tests(task, frames)
    result = {"tested_metric": METRIC_NAMES[tested], "wilcoxon_statistic": test["statistic"],
              "wilcoxon_p_one_sided": test["p"], "wilcoxon_role": (
                  "the paper's replication figure" if tested == "correct" else "the test of a continuous score"),
              "exact_tests": exact}
    if tested == "correct":
        accuracy = exact["accuracy"]
        result |= {"sign_test_p_one_sided": accuracy["sign_test_p_one_sided"],
                   "mcnemar_exact_p": accuracy["mcnemar_exact_p_two_sided"], "mcnemar_table": accuracy["table"]}
    return result, test["notes"]


def _evaluate_task(task: str, frames: dict[str, pd.DataFrame], dropped: dict[str, int],
                   resamples: int, seed: int) -> tuple[dict, list[str]]:
    n = len(frames["base"])
    notes = [f"{len(cases)} case(s) without a {label} output (no output row) left out: "
             f"{', '.join(map(str, cases[:_NAMED]))}{', ...' if len(cases) > _NAMED else ''}"
             for label, cases in zip(("base", "fine-tuned"), dropped.values()) if cases]
    report: dict = {model: {"n": n} for model in MODELS}
    f1_intervals = None
    if LABEL_COLUMNS[task]:
        figures, f1_intervals, label_notes = _label_metrics(task, frames, resamples, seed)
        notes += label_notes
        for model in MODELS:
            report[model] |= figures[model]
    figures, difference, mean_notes = _mean_metrics(task, frames, resamples, seed)
    tests, test_notes = _tests(task, frames)
    for model in MODELS:
        report[model] |= figures[model]
    if f1_intervals is not None:
        for model in MODELS:
            report[model]["ci95"]["f1_macro"] = {"bootstrap": f1_intervals[model]}
        difference["f1_macro"] = {"mean": report["finetuned"]["f1_macro"] - report["base"]["f1_macro"],
                                  "ci95": {"bootstrap": f1_intervals["difference"]}}
    report["paired"] = {"n_pairs": n, "n_dropped": {key: len(cases) for key, cases in dropped.items()},
                        "dropped_cases": dropped, **tests, "difference": difference}
    return report, notes + mean_notes + test_notes


@functools.cache
def _versions() -> dict[str, str]:
    return {package: importlib.metadata.version(package)
            for package in ("numpy", "pandas", "scipy", "scikit-learn", "statsmodels", "rouge-score",
                            "krippendorff", "simple-icd-10-cm")}


def _methods(resamples: int, seed: int) -> dict:
    return {
        "pairing": "only cases with an output from both models are evaluated; the others are "
                   "counted in paired.n_dropped",
        "scores": {
            "regimen": "accuracy: exact match of the text ignoring case and spacing; rouge1_f: mean "
                       "ROUGE-1 F-measure, rouge_score RougeScorer(['rouge1'], use_stemmer=True)"
                       ".score(target=gold, prediction=output); total_dose_match, fractions_match: the "
                       "first course's total dose (within 1e-6 Gy) and fraction count as read by "
                       "rocore.data.regimen.parse_regimen; schedule_match: the same for every course, in "
                       "order, and no extra course; dose scores only over cases whose gold regimen "
                       "states a dose (n_dose_scored)",
            "modality": "exact match after rocore.data.labels.normalise_modality; an output that is not "
                        "exactly one modality is wrong and labelled 'other'",
            "icd10": "accuracy: exact match after rocore.data.labels.normalise_icd10; accuracy_category: "
                     "same first three characters; valid_rate, billable_rate: the output is a code "
                     "of the CDC ICD-10-CM set of simple-icd-10-cm, a leaf code; laterality_error(s): "
                     "a valid code that differs from the gold code only in the character that "
                     "writes the side of the body (rocore.evaluation.scoring.is_laterality_error)",
        },
        "classification": "sklearn.metrics.precision_recall_fscore_support(gold, output, labels=LABELS, "
                          "zero_division=0) with average='macro' and 'weighted' (and per class); LABELS: "
                          "the classes present in the gold answers or either model's outputs, of the four "
                          "modalities (modality) or of the ICD-10-CM codes (icd10); "
                          "confusion_matrix: sklearn.metrics.confusion_matrix, rows gold, columns "
                          "output, labels the modalities and 'other'",
        "wilcoxon": "scipy.stats.wilcoxon(finetuned, base, alternative='greater', zero_method='wilcox', "
                    "method='auto': the exact null distribution for at most 50 differences without ties or "
                    "zeros; with ties or zeros an exhaustive permutation test for at most 13 differences, "
                    "else the normal approximation) on per-case scores: ROUGE-1 F (regimen, "
                    "a continuous score); correct 0/1 (modality, icd10) only as the paper's replication "
                    "figure, since on 0/1 scores every non-zero difference ties and, beyond 13 cases, it "
                    "is a normal-approximation sign test that overstates significance; p = 1.0 when no "
                    "case differs",
        "sign_test": "exact sign test on the discordant cases, one-sided (fine-tuned > base): "
                     "scipy.stats.binomtest(finetuned_only, finetuned_only + base_only, "
                     "alternative='greater'); it is the one-sided exact McNemar test; for every 0/1 score "
                     "(paired.exact_tests, paired.sign_test_p_one_sided)",
        "mcnemar": "statsmodels.stats.contingency_tables.mcnemar(table, exact=True), two-sided exact "
                   "binomial test of the discordant cases, for every 0/1 score (paired.exact_tests; "
                   "paired.mcnemar_exact_p for correctness)",
        "bootstrap": {"method": "percentile", "confidence": CONFIDENCE, "resamples": resamples,
                      "seed": seed,
                      "description": "cases resampled with replacement, the same cases for both "
                                     "models, for each mean and for the mean difference "
                                     "(fine-tuned - base); ci95.*.bootstrap; the reported interval for "
                                     "ROUGE-1 F and macro-F1 (no closed form), given for 0/1 scores too "
                                     "but not reported there"},
        "wilson": f"statsmodels.stats.proportion.proportion_confint(k, n, alpha={ALPHA}, "
                  "method='wilson') for every 0/1 score; ci95.*.wilson",
        "newcombe": "Newcombe's method 10 (Stat Med 1998;17:2635-50) for the difference of two paired "
                    "proportions: the two Wilson intervals combined with the table's phi correlation; "
                    "paired.difference.*.ci95.newcombe, for every 0/1 score",
        "macro_averages": "over the classes present in the gold answers or the outputs of the cases "
                          "evaluated (classes_averaged; absent_classes are listed)",
        "primary": "one declared primary endpoint per task (default: regimen acceptability when the "
                   "runs have ratings, else ROUGE-1 F; accuracy for modality and ICD-10), tested one-sided "
                   "(fine-tuned > base: exact sign test for 0/1 outcomes, Wilcoxon for ROUGE-1 F); Holm's "
                   "adjustment (statsmodels.stats.multitest.multipletests(method='holm')) across the "
                   "declared family; every other p-value is secondary and unadjusted",
        "versions": dict(_versions()),  # a copy: the cached one is shared
    }


def endpoint_test(task_report: dict | None, metric: str, acceptability: dict | None = None) -> tuple[str, float | None]:
    """(test, one-sided p) of a declared endpoint: exact sign test for 0/1, Wilcoxon for ROUGE-1 F."""
    if metric == ACCEPTABILITY:
        if acceptability is None:
            raise ValueError("acceptability is a primary endpoint only where the runs have ratings")
        return "exact sign test, one-sided", acceptability["paired"]["sign_test_p_one_sided"]
    if task_report is None:
        raise ValueError(f"no figures for endpoint {metric}")
    paired = task_report["paired"]
    if metric in paired["exact_tests"]:
        return "exact sign test, one-sided", paired["exact_tests"][metric]["sign_test_p_one_sided"]
    if metric == "rouge1_f" and paired["tested_metric"] == metric:
        return "Wilcoxon signed-rank, one-sided", paired["wilcoxon_p_one_sided"]
    raise ValueError(f"{metric} cannot be a primary endpoint: choose a 0/1 score, rouge1_f or acceptability")


def primary_endpoints(report: dict, acceptability: dict | None = None,
                      declared: dict[str, str] | None = None) -> dict:
    """The declared primary endpoint of each evaluated task, its one-sided p and Holm-adjusted p.

    `declared` maps a task to its endpoint (a 0/1 score's metric name, rouge1_f or acceptability);
    the others take DEFAULT_PRIMARY, with acceptability for regimen when `acceptability` is given.
    `acceptability` is the per-case figure of rocore.evaluation.acceptability (regimen ratings).
    """
    defaults = DEFAULT_PRIMARY | ({"regimen": ACCEPTABILITY} if acceptability is not None else {})
    chosen = defaults | (declared or {})
    endpoints = {}
    for task in TASKS:
        task_report = report["tasks"].get(task)
        if task_report is None and not (task == "regimen" and chosen[task] == ACCEPTABILITY and acceptability):
            continue
        test, p = endpoint_test(task_report, chosen[task], acceptability)
        endpoints[task] = {"metric": chosen[task], "test": test, "p": p}
    adjusted = holm({task: e["p"] for task, e in endpoints.items()})
    for task, endpoint in endpoints.items():
        endpoint["p_holm"] = adjusted[task]
    return {"endpoints": endpoints, "adjustment": "holm", "family_size": len(endpoints),
            "declared": {task: chosen[task] for task in endpoints}}


def methods_text(report: dict | None, primary: dict | None, reviews: dict | None = None) -> str:
    """The statistical methods as one paragraph a researcher can paste into a paper."""
    versions = _versions()
    parts = []
    if report is not None:
        m = report["methods"]
        boot = m["bootstrap"]
        parts.append(
            "Base and fine-tuned outputs were compared case by case on the same held-out cases; a case "
            "without an output row from one model was excluded and counted, while an empty or unreadable "
            "output was scored as wrong. For binary per-case outcomes (exact match, correct modality, "
            "correct ICD-10-CM code, dose and schedule match) we report each model's proportion with a "
            "Wilson 95% confidence interval, the paired difference with Newcombe's hybrid score interval "
            "for paired proportions (method 10), the exact sign test on discordant pairs (one-sided, "
            "fine-tuned better; equivalent to the one-sided exact McNemar test) and the two-sided exact "
            "McNemar test. ROUGE-1 F was compared with the one-sided Wilcoxon signed-rank test (zero "
            "differences dropped; exact null distribution for up to 50 differences without ties or zeros, "
            "an exhaustive permutation test for up to 13 differences with ties or zeros, else the normal "
            "approximation); the one-sided Wilcoxon test on binary outcomes is reported "
            "only to replicate Wang et al. (2025). ROUGE-1 F and macro-F1 have percentile bootstrap "
            f"intervals ({boot['resamples']} resamples of cases, the same cases for both models, seed "
            f"{boot['seed']}). Precision, recall and F1 were macro-averaged over the classes present in "
            "the gold answers or outputs of the cases shown, and weighted by gold support.")
    if primary is not None and primary["endpoints"]:
        declared = "; ".join(f"{task}: {e['metric']} ({e['test']})" for task, e in primary["endpoints"].items())
        parts.append(f"One primary endpoint was declared per task ({declared}), and their p-values were "
                     f"adjusted with Holm's method across this family of {primary['family_size']}; all other "
                     "p-values are secondary and unadjusted.")
    if reviews is not None:
        parts.append(
            "Clinical acceptability was judged blinded, with the side each output was shown on randomized "
            "per reviewer and case and each reviewer's case order randomized. Per case and model, an "
            "output was acceptable when more than half of the reviewers who gave it a verdict judged it "
            "acceptable (a tie counts as not acceptable); this per-case proportion is the primary "
            "acceptability figure, compared between models as the binary outcomes above. The proportion "
            "of all individual verdicts is reported as a secondary figure with a percentile bootstrap "
            "interval that resamples whole cases. Agreement between reviewers is Fleiss' kappa over the "
            "outputs with exactly k verdicts, Krippendorff's alpha (nominal) over all verdicts and "
            "Cohen's kappa per pair of reviewers over the outputs both rated, for each model separately "
            "and pooled. As checks of the blinded design we report the share of preferences for the "
            "output shown first (exact binomial test against one half) and acceptability in the first "
            "and second half of each reviewer's queue (Wilson intervals).")
    parts.append("Computed with rocore using " + ", ".join(
        f"{name} {versions[name]}" for name in ("scipy", "statsmodels", "scikit-learn", "numpy", "pandas",
                                               "krippendorff", "rouge-score") if name in versions) + ".")
    return " ".join(parts)


def evaluate_scores(scores: pd.DataFrame, *, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """The report (tasks, methods, notes) from per-case scores as made by score_outputs."""
    if len(scores) == 0:
        raise ValueError("no cases to evaluate")
    missing = [c for c in ("case_id", "task", "model") if c not in scores.columns]
    if missing:
        raise ValueError(f"scores lack column(s) {', '.join(missing)}")
    unknown = [value for column, known in (("task", TASKS), ("model", MODELS))
               for value in scores[column].unique() if value not in known]
    if unknown:
        raise ValueError(f"scores name unknown tasks or models: {', '.join(map(str, unknown))}")
    tasks, notes = {}, []
    for task in TASKS:
        rows = scores[scores["task"] == task]
        if rows.empty:
            continue
        missing = [c for c in (*LABEL_COLUMNS[task], *SCORE_COLUMNS[task]) if c not in rows.columns]
        if missing:
            raise ValueError(f"{task}: scores lack column(s) {', '.join(missing)}")
        base, finetuned, dropped = _pair(rows, task)
        if base.empty:
            notes.append(f"{task}: no case has outputs from both models; not evaluated")
            continue
        frames = {"base": base, "finetuned": finetuned}
        tasks[task], task_notes = _evaluate_task(task, frames, dropped, resamples, seed)
        notes += [f"{task}: {note}" for note in task_notes]
    if not tasks:
        raise ValueError("no cases to evaluate: " + "; ".join(notes))
    return {"tasks": tasks, "methods": _methods(resamples, seed), "notes": notes}


def evaluate_outputs(outputs: pd.DataFrame, *, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """The report for a table of paired outputs (OUTPUT_COLUMNS); raises EvaluationInputError."""
    if len(outputs) == 0:
        raise ValueError("no cases to evaluate")
    problems = output_problems(outputs, "outputs", range(1, len(outputs) + 1))
    if problems:
        raise EvaluationInputError(problems)
    return evaluate_scores(score_outputs(outputs), resamples=resamples, seed=seed)


