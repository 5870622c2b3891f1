"""Base versus fine-tuned: paired model outputs in, the study's metrics and tests out, as JSON.

Two steps, so that the slow one can be stored. score_outputs scores every output once
(rocore.evaluation.scoring); evaluate_scores pairs those scores by case and computes every figure of the
report (rocore.evaluation.statistics). evaluate_outputs runs both and is the one place that turns a table of
paired outputs (columns case_id, task, gold, base, finetuned) into the report: the CLI reads one
from a file with read_outputs_file, the DB mode builds one from two stored generation runs, and a
dashboard can keep score_outputs' table and call evaluate_scores alone.

A missing output (None or NaN; an empty cell in a file) means the model has no answer for that
case: the case is left out of every figure and counted in "n_dropped". An empty string is an
answer, and a wrong one.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import sqlite3
import zlib
from pathlib import Path

import pandas as pd

from rocore.data.case_import import ImportRefused, Problem, format_problems, read_table
from rocore.data.labels import MODALITIES, LabelError, icd10_status, normalise_icd10, normalise_modality
from rocore.evaluation.scoring import LABEL_COLUMNS, OTHER, SCORE_COLUMNS, TASKS, score_task
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

__all__ = [
    "MODELS",
    "OUTPUT_COLUMNS",
    "EvaluationInputError",
    "evaluate_outputs",
    "evaluate_scores",
    "format_tables",
    "read_outputs_file",
    "score_outputs",
]

OUTPUT_COLUMNS = ("case_id", "task", "gold", "base", "finetuned")
MODELS = ("base", "finetuned")

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


class EvaluationInputError(ValueError):
    """Outputs that cannot be evaluated; `problems` lists every located reason."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(format_problems(problems))


# --------------------------------------------------------------------------- input


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _gold_problem(task: str, gold: str) -> str | None:
    """Why a gold answer cannot be scored, or None."""
    try:
        if task == "modality":
            normalise_modality(gold)
        elif task == "icd10" and icd10_status(normalise_icd10(gold)) == "invalid":
            return "is not a valid ICD-10-CM code"
    except LabelError as exc:
        return str(exc)
    return None


def _problems(outputs: pd.DataFrame, name: str, rows) -> list[Problem]:
    """Every located reason why `outputs` cannot be evaluated; `rows` numbers its rows."""
    missing = [column for column in OUTPUT_COLUMNS if column not in outputs.columns]
    if missing:
        return [Problem(name, f"has no column '{column}'; expected columns {', '.join(OUTPUT_COLUMNS)}")
                for column in missing]
    problems: list[Problem] = []
    gold_problems: dict[tuple[str, str], str | None] = {}
    first_row: dict[tuple[str, str], int] = {}
    for row, case_id, task, gold in zip(rows, outputs["case_id"], outputs["task"], outputs["gold"]):
        case_id, task, gold = _cell(case_id), _cell(task).lower(), _cell(gold)
        if not case_id:
            problems.append(Problem(name, "is empty; every output needs its case id", row, "case_id"))
        if task not in TASKS:
            problems.append(Problem(name, f"{'is empty; expected' if not task else 'is not'} one of "
                                    f"{', '.join(TASKS)}", row, "task", task or None))
            continue
        if not gold:
            problems.append(Problem(name, "is empty; expected the gold answer", row, "gold"))
        else:
            if (task, gold) not in gold_problems:
                gold_problems[task, gold] = _gold_problem(task, gold)
            if gold_problems[task, gold]:
                problems.append(Problem(name, gold_problems[task, gold], row, "gold", gold))
        if case_id and (case_id, task) in first_row:
            problems.append(Problem(name, f"case '{case_id}' has a second {task} row "
                                    f"(the first is row {first_row[case_id, task]})", row, "case_id"))
        first_row.setdefault((case_id, task), row)
    return problems


def _tidy(outputs: pd.DataFrame) -> pd.DataFrame:
    """The output columns with trimmed ids and lower-case tasks; missing outputs as None."""
    return pd.DataFrame({
        "case_id": [_cell(v) for v in outputs["case_id"]],
        "task": [_cell(v).lower() for v in outputs["task"]],
        "gold": [_cell(v) for v in outputs["gold"]],
        **{model: pd.Series([None if pd.isna(v) else str(v) for v in outputs[model]], dtype=object)
           for model in MODELS},
    })


def read_outputs_file(path: str | Path) -> pd.DataFrame:
    """Paired outputs from a CSV/TSV (or .xlsx, JSON lines) file with columns OUTPUT_COLUMNS.

    Column names are matched ignoring case and surrounding spaces. An empty base or finetuned
    cell means that model has no output for the case. Raises EvaluationInputError listing every
    problem as "FILE: row N: column 'task': 'x' is not one of regimen, modality, icd10".
    """
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise EvaluationInputError([Problem(name, f"cannot be read: {exc.strerror}")]) from None
    try:
        table = read_table(data, name)
    except ImportRefused as exc:
        raise EvaluationInputError(exc.problems) from None
    by_key = {column.strip().lower(): column for column in table.columns}
    frame = pd.DataFrame(
        {column: [values.get(by_key[column], "") for _, values in table.rows]
         for column in OUTPUT_COLUMNS if column in by_key},
        index=range(len(table.rows)),
    )
    for model in MODELS:
        if model in frame:
            frame[model] = [value if value.strip() else None for value in frame[model]]
    problems = table.problems + _problems(frame, name, [number for number, _ in table.rows])
    if problems:
        raise EvaluationInputError(problems)
    return _tidy(frame)


def latest_run_pair(conn: sqlite3.Connection) -> tuple[int, int]:
    """(base run, fine-tuned run): the newest fine-tuned run and the newest base-only run of the
    same base model over the same split part."""
    pair = conn.execute(
        "SELECT b.run_id, f.run_id FROM generation_runs f JOIN generation_runs b "
        "ON b.base_model_id = f.base_model_id AND b.split_id = f.split_id AND b.part = f.part "
        "WHERE f.adapter_model_id IS NOT NULL AND b.adapter_model_id IS NULL "
        "ORDER BY f.run_id DESC, b.run_id DESC LIMIT 1").fetchone()
    if pair is None:
        raise EvaluationInputError([Problem("database", "has no base and fine-tuned generation runs over "
                                            "the same split part; generate both first")])
    return pair[0], pair[1]


def check_run_pair(conn: sqlite3.Connection, base_run: int, finetuned_run: int) -> None:
    """Refuse two runs whose outputs cannot be paired case by case."""
    if base_run == finetuned_run:
        raise EvaluationInputError([Problem("database", f"run {base_run} was chosen twice; choose two runs")])
    runs = {r["run_id"]: r for r in conn.execute(
        "SELECT run_id, split_id, part FROM generation_runs WHERE run_id IN (?, ?)", (base_run, finetuned_run))}
    for run_id in (base_run, finetuned_run):
        if run_id not in runs:
            raise EvaluationInputError([Problem("database", f"has no generation run {run_id}")])
    if (runs[base_run]["split_id"], runs[base_run]["part"]) != (runs[finetuned_run]["split_id"],
                                                               runs[finetuned_run]["part"]):
        raise EvaluationInputError([Problem("database", f"runs {base_run} and {finetuned_run} cover different "
                                            "split parts; their outputs cannot be paired case by case")])


def outputs_from_runs(conn: sqlite3.Connection, base_run: int, finetuned_run: int) -> pd.DataFrame:
    """The paired-output table of two stored generation runs, gold answers from the cases.

    A model's answer is its normalised answer, or its raw text where none could be read (a wrong
    answer, not a missing one); a case one run has not reached yet is missing for that model.
    """
    check_run_pair(conn, base_run, finetuned_run)
    rows = conn.execute(
        "SELECT k.case_id, k.task, c.regimen, c.modality, c.icd10, "
        "(SELECT coalesce(answer, raw_text) FROM generations WHERE run_id = ? AND case_id = k.case_id AND task = k.task) AS base, "
        "(SELECT coalesce(answer, raw_text) FROM generations WHERE run_id = ? AND case_id = k.case_id AND task = k.task) AS finetuned "
        "FROM (SELECT DISTINCT case_id, task FROM generations WHERE run_id IN (?, ?)) AS k "
        "JOIN cases AS c USING (case_id) ORDER BY k.task, k.case_id",
        (base_run, finetuned_run, base_run, finetuned_run)).fetchall()
    if not rows:
        raise EvaluationInputError([Problem("database", f"runs {base_run} and {finetuned_run} have no outputs yet")])
    return _tidy(pd.DataFrame({
        "case_id": [r["case_id"] for r in rows], "task": [r["task"] for r in rows],
        "gold": [r[r["task"]] for r in rows],
        "base": [r["base"] for r in rows], "finetuned": [r["finetuned"] for r in rows],
    }))


# --------------------------------------------------------------------------- scoring


def score_outputs(outputs: pd.DataFrame) -> pd.DataFrame:
    """Per-case scores of every output: one row per (case, task, model), the part worth storing.

    Columns: case_id, task, model, then the label and score columns of rocore.evaluation.scoring (NaN where
    a column does not belong to the row's task). Missing outputs get no row. The outputs are not
    checked here (evaluate_outputs and read_outputs_file do): a gold answer that is no label
    raises LabelError.
    """
    outputs = _tidy(outputs)
    frames = []
    for task in TASKS:
        rows = outputs[outputs["task"] == task]
        for model in MODELS:
            answered = rows[rows[model].notna()]
            scores = score_task(task, answered["gold"].tolist(), answered[model].tolist())
            scores.insert(0, "case_id", answered["case_id"].to_numpy())
            scores.insert(1, "task", task)
            scores.insert(2, "model", model)
            frames.append(scores)
    return pd.concat(frames, ignore_index=True)


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
    problems = _problems(outputs, "outputs", range(1, len(outputs) + 1))
    if problems:
        raise EvaluationInputError(problems)
    return evaluate_scores(score_outputs(outputs), resamples=resamples, seed=seed)


# --------------------------------------------------------------------------- text tables


def _number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _with_interval(value, ci95: dict | None, sign: str = "") -> str:
    text = "-" if value is None else f"{value:{sign}.3f}"
    interval = (ci95 or {}).get("bootstrap")
    if value is None or not interval:
        return text
    return f"{text} [{_number(interval[0])}, {_number(interval[1])}]"


def _p(value) -> str:
    if value is None:
        return "-"
    return "< 1e-300" if value == 0 else f"{value:.3g}"


def _task_text(task: str, report: dict) -> list[str]:
    base, finetuned, paired = report["base"], report["finetuned"], report["paired"]
    dropped = sum(paired["n_dropped"].values())
    lines = [f"== {task}: {paired['n_pairs']} paired cases"
             + (f", {dropped} left out" if dropped else "") + " =="]
    rows = {}
    for metric in [*(METRIC_NAMES[c] for c in SCORE_COLUMNS[task]),
                   "precision_macro", "recall_macro", "f1_macro",
                   "precision_weighted", "recall_weighted", "f1_weighted"]:
        if metric not in base:
            continue
        difference = paired["difference"].get(metric) or {"mean": None, "ci95": None}
        rows[metric] = {
            "base": _with_interval(base[metric], base["ci95"].get(metric)),
            "fine-tuned": _with_interval(finetuned[metric], finetuned["ci95"].get(metric)),
            "difference": _with_interval(difference["mean"], difference["ci95"], sign="+"),
        }
    lines.append(pd.DataFrame(rows).T.to_string())
    test = (f"Wilcoxon one-sided ({paired['tested_metric']}, fine-tuned > base): "
            f"p = {_p(paired['wilcoxon_p_one_sided'])}")
    if "mcnemar_exact_p" in paired:
        test += f"; exact McNemar: p = {_p(paired['mcnemar_exact_p'])}"
    lines.append(test)
    if "per_class" in base:
        per_class = pd.DataFrame({
            (model, measure): {label: values[measure] for label, values in report[model]["per_class"].items()}
            for model in MODELS for measure in ("precision", "recall", "f1")
        })
        per_class["gold", "support"] = pd.Series({k: v["support"] for k, v in base["per_class"].items()})
        lines += ["per class:", per_class.to_string(float_format="{:.3f}".format)]
    if "confusion_matrix" in base:
        for model in MODELS:
            matrix = report[model]["confusion_matrix"]
            table = pd.DataFrame(matrix["matrix"], index=matrix["labels"], columns=matrix["labels"])
            lines += [f"confusion matrix, {model} (rows gold, columns output):", table.to_string()]
    return lines


def format_tables(result: dict) -> str:
    """The report as text tables for a terminal: metrics with 95% bootstrap intervals, tests, notes."""
    lines: list[str] = []
    for task, report in result["tasks"].items():
        lines += _task_text(task, report) + [""]
    if result["notes"]:
        lines += ["notes:", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines).rstrip() + "\n"
