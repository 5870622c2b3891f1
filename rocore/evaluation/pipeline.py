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
    dropped = {"no_base_output": len(frames["finetuned"]) - len(paired),
               "no_finetuned_output": len(frames["base"]) - len(paired)}
    return base, finetuned, dropped


def _seed(seed: int, task: str, metric: str) -> list[int]:
    """A seed per task and metric, so that an interval does not depend on what else is evaluated."""
    return [seed, zlib.crc32(f"{task}/{metric}".encode())]


def _label_metrics(task: str, frames: dict[str, pd.DataFrame]) -> tuple[dict[str, dict], list[str]]:
    """Accuracy, precision, recall and F1 per model; per class and confusion matrix for modality."""
    labels = list(MODALITIES) if task == "modality" else sorted(frames["base"]["gold_label"].unique())
    figures, notes = {}, []
    for model, frame in frames.items():
        metrics = classification_metrics(frame["gold_label"], frame["predicted_label"], labels)
        notes += [note for note in metrics.pop("notes") if note not in notes]
        if task == "modality":
            metrics["confusion_matrix"] = confusion(frame["gold_label"], frame["predicted_label"],
                                                    [*labels, OTHER])
        else:
            del metrics["per_class"]
            metrics |= {"n_labels": len(labels), "laterality_errors": int(frame["laterality_error"].sum())}
        figures[model] = metrics
    return figures, notes


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


def _tests(task: str, frames: dict[str, pd.DataFrame]) -> tuple[dict, list[str]]:
    """One-sided Wilcoxon on the task's tested score; exact McNemar when that score is 0/1."""
    tested = TESTED_SCORE[task]
    base, finetuned = frames["base"][tested].to_numpy(), frames["finetuned"][tested].to_numpy()
    test = wilcoxon_greater(finetuned, base)
    result = {"tested_metric": METRIC_NAMES[tested], "wilcoxon_statistic": test["statistic"],
              "wilcoxon_p_one_sided": test["p"]}
    if tested == "correct":
        exact = mcnemar_exact(finetuned, base)
        result |= {"mcnemar_exact_p": exact["p"], "mcnemar_table": exact["table"]}
    return result, test["notes"]


def _evaluate_task(task: str, frames: dict[str, pd.DataFrame], dropped: dict[str, int],
                   resamples: int, seed: int) -> tuple[dict, list[str]]:
    n = len(frames["base"])
    notes = [f"{count} case(s) without a {label} output left out"
             for label, count in zip(("base", "fine-tuned"), dropped.values()) if count]
    report: dict = {model: {"n": n} for model in MODELS}
    if LABEL_COLUMNS[task]:
        figures, label_notes = _label_metrics(task, frames)
        notes += label_notes
        for model in MODELS:
            report[model] |= figures[model]
    figures, difference, mean_notes = _mean_metrics(task, frames, resamples, seed)
    tests, test_notes = _tests(task, frames)
    for model in MODELS:
        report[model] |= figures[model]
    report["paired"] = {"n_pairs": n, "n_dropped": dropped, **tests, "difference": difference}
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
                          "the four modalities (modality), the distinct gold codes sorted (icd10); "
                          "confusion_matrix: sklearn.metrics.confusion_matrix, rows gold, columns "
                          "output, labels the modalities and 'other'",
        "wilcoxon": "scipy.stats.wilcoxon(finetuned, base, alternative='greater', zero_method='wilcox') "
                    "on per-case scores: correct 0/1 (modality, icd10), ROUGE-1 F (regimen); p = 1.0 "
                    "when no case differs",
        "mcnemar": "statsmodels.stats.contingency_tables.mcnemar(table, exact=True) on per-case "
                   "correctness (modality, icd10): two-sided exact binomial test of the discordant cases",
        "bootstrap": {"method": "percentile", "confidence": CONFIDENCE, "resamples": resamples,
                      "seed": seed,
                      "description": "cases resampled with replacement, the same cases for both "
                                     "models, for each mean and for the mean difference "
                                     "(fine-tuned - base); ci95.*.bootstrap"},
        "wilson": f"statsmodels.stats.proportion.proportion_confint(k, n, alpha={ALPHA}, "
                  "method='wilson') for every 0/1 score; ci95.*.wilson",
        "versions": dict(_versions()),  # a copy: the cached one is shared
    }


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


